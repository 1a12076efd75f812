"""Short recovery fine-tune of a pruned task network on its own loss."""

from __future__ import annotations

import torch
from torch import nn

from drmgf.data.base import Split, augment_crop_flip, iterate, normalize
from drmgf.losses import task_loss
from drmgf.metrics import TaskMeter
from drmgf.tasks import TaskSpec
from drmgf.train.loop import Run
from drmgf.utils import generator

FINETUNE_LR_FACTOR = 0.1  # a fraction of the run's learning rate: recover, do not retrain


@torch.no_grad()
def task_metrics(module: nn.Module, task: TaskSpec, split: Split, run: Run, batch_size: int = 256) -> dict[str, float]:
    """Metrics of a single-output network on ``split``."""
    module.eval()
    meter = TaskMeter(task)
    for images, targets in iterate(split, batch_size):
        meter.update(module(normalize(images, run.data.mean, run.data.std)), targets[task.target])
    return meter.compute()


def finetune(module: nn.Module, task: TaskSpec, run: Run, epochs: int) -> None:
    """Train ``module`` (in place) for ``epochs`` on ``task``'s loss with the run's optimizer at 0.1x its rate."""
    cfg = run.cfg
    for p in module.parameters():
        p.requires_grad_(True)
    lr = cfg.optim.lr * FINETUNE_LR_FACTOR  # type: ignore[operator]
    if cfg.optim.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=cfg.optim.momentum,
                                                     weight_decay=cfg.optim.weight_decay)
    else:
        opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=cfg.optim.weight_decay)
    augment = cfg.data.augment and task.kind == "classification"
    drop_last = len(run.data.train) % cfg.optim.batch_size == 1
    module.train()
    for epoch in range(epochs):
        gen = generator(cfg.run.seed, 1_000_003, epoch)
        for images, targets in iterate(run.data.train, cfg.optim.batch_size, gen=gen, drop_last=drop_last):
            x = normalize(images, run.data.mean, run.data.std)
            x = augment_crop_flip(x, gen, flip=run.data.hflip) if augment else x
            loss = task_loss(task, module(x), targets[task.target])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
