"""What a training method sees of a run: model, tasks, data, optimizer, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from drmgf.config import TrainConfig
from drmgf.data.base import DataBundle, augment_crop_flip, iterate, normalize, num_batches
from drmgf.losses import task_losses
from drmgf.tasks import TaskSpec
from drmgf.utils import generator

ProgressFn = Callable[[str, int, int, float], None]
"""progress(stage, step, total, loss): ``stage`` names the pass ("train", "task shape 1/3", "fusion")."""


def no_progress(stage: str, step: int, total: int, loss: float) -> None:
    del stage, step, total, loss


@dataclass
class TrainContext:
    """Everything one epoch of any method needs.

    Attributes:
        model: the multi-output network (returns dict name -> output).
        tasks: the model's outputs with their targets.
        weights: loss weight lambda per output name.
        data: the dataset.
        cfg: the resolved run configuration.
        device: where the model lives.
        optimizer: the network optimizer.
        progress: callback for progress bars (the library never prints).
    """

    model: nn.Module
    tasks: tuple[TaskSpec, ...]
    weights: dict[str, float]
    data: DataBundle
    cfg: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    progress: ProgressFn = no_progress
    augment: bool = False
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def steps_per_pass(self, limit: int | None = None) -> int:
        """Minibatches in one pass over the training split (or ``limit`` when smaller)."""
        n = num_batches(len(self.data.train), self.cfg.optim.batch_size, drop_last=self._drop_last())
        return n if limit is None else min(n, limit)

    def _drop_last(self) -> bool:
        # A final batch of one image would break BatchNorm in train mode.
        return len(self.data.train) % self.cfg.optim.batch_size == 1

    def batches(self, epoch: int, pass_id: int = 0, limit: int | None = None
                ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Preprocessed training minibatches on the device, in an order fixed by (seed, epoch, pass).

        Yields:
            (x [B, C, H, W] float, targets {label: tensor}).
        """
        gen = generator(self.cfg.run.seed, epoch, pass_id)
        for images, targets in iterate(self.data.train, self.cfg.optim.batch_size, gen=gen,
                                       drop_last=self._drop_last(), max_batches=limit):
            x = normalize(images, self.data.mean, self.data.std)
            if self.augment:
                x = augment_crop_flip(x, gen, flip=self.data.hflip)
            yield x.to(self.device), {k: v.to(self.device) for k, v in targets.items()}

    def losses(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted loss per output."""
        return task_losses(self.tasks, outputs, targets)

    def weighted_sum(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_t lambda_t L_t."""
        return sum(self.weights[n] * loss for n, loss in losses.items())  # type: ignore[return-value]
