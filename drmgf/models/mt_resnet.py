"""``mt_resnet``: a shared CIFAR ResNet trunk with one pooled linear head per classification task."""

from __future__ import annotations

import torch
from torch import nn

from drmgf.models.blocks import ClassifierHead, Stem, init_weights, make_blocks
from drmgf.tasks import TaskSpec


class TrunkHead(nn.Module):
    """A trunk followed by one head (shares parameters with the multi-task model)."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class MTResNet(nn.Module):
    """Multi-task ResNet: shared stem and residual stages, a head per task.

    Args:
        tasks: classification tasks, one head each.
        in_channels: image channels.
        depth: 6n + 2.
        width: channels of the first stage.
    """

    def __init__(self, tasks: tuple[TaskSpec, ...], in_channels: int = 3, depth: int = 8, width: int = 16) -> None:
        super().__init__()
        for t in tasks:
            if t.kind != "classification":
                raise ValueError(f"mt_resnet has classification heads only; task {t.name!r} is {t.kind}")
        self.trunk = nn.Sequential(Stem(in_channels, width), *make_blocks(depth, width))
        self.heads = nn.ModuleDict({t.name: ClassifierHead(4 * width, t.num_classes, conv=False) for t in tasks})
        self.tasks = tuple(tasks)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}

    def task_module(self, name: str) -> nn.Module:
        """Trunk plus the head of task ``name``."""
        return TrunkHead(self.trunk, self.heads[name])


def build(tasks: tuple[TaskSpec, ...], in_channels: int, depth: int | None = None, width: int | None = None,
          exit_every: int | None = None) -> MTResNet:
    """Registry entry: one head per task of the dataset."""
    del exit_every
    return MTResNet(tasks, in_channels, depth=depth or 8, width=width or 16)
