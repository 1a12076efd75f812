"""``resnet_sdn``: a CIFAR ResNet with early exits (multi-exit, SDN style).

Exit k sees only the layers before it; exits are named ``exit0 .. exitK`` and all predict the
same label. Intermediate exits have a private conv block before pooling (as SDN's internal
classifiers do); the last exit is the usual pooled linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from drmgf.models.blocks import ClassifierHead, GradientRescale, Stem, init_weights, make_blocks, resnet_stages
from drmgf.tasks import TaskSpec


def exit_positions(depth: int, exit_every: int | None) -> list[int]:
    """Indices of the residual blocks followed by an exit (the last block always has one)."""
    counts, _ = resnet_stages(depth, 1)
    total = sum(counts)
    if exit_every is None:
        ends = [sum(counts[: i + 1]) - 1 for i in range(len(counts))]
    else:
        ends = list(range(exit_every - 1, total, exit_every))
    return sorted(set(ends) | {total - 1})


class ExitPath(nn.Module):
    """The layers one exit uses: stem, blocks up to the exit, the exit head (shares parameters)."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class ResNetSDN(nn.Module):
    """Multi-exit CIFAR ResNet.

    Args:
        label: the prediction problem every exit solves.
        in_channels: image channels.
        depth: 6n + 2.
        width: channels of the first stage (stages use width, 2*width, 4*width).
        exit_every: an exit every N blocks; None puts one after every stage.
    """

    def __init__(self, label: TaskSpec, in_channels: int = 3, depth: int = 8, width: int = 16,
                 exit_every: int | None = None) -> None:
        super().__init__()
        if label.kind != "classification":
            raise ValueError(f"resnet_sdn needs a classification label, {label.name!r} is {label.kind}")
        self.stem = Stem(in_channels, width)
        self.blocks = make_blocks(depth, width)
        self.exit_after = exit_positions(depth, exit_every)
        chans = [b.conv2.out_channels for b in self.blocks]  # type: ignore[union-attr]
        last = len(self.blocks) - 1
        self.exits = nn.ModuleList(
            ClassifierHead(chans[i], label.num_classes, conv=i != last) for i in self.exit_after
        )
        self.tasks = tuple(label.as_target(f"exit{k}") for k in range(len(self.exit_after)))
        self.gradient_equilibrium = False
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        k, n_exits = 0, len(self.exit_after)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i != self.exit_after[k]:
                continue
            if self.gradient_equilibrium:  # GE: average the gradients of the exits that reach this point
                x = GradientRescale.apply(x, 1.0 / (n_exits - k))
            out[self.tasks[k].name] = self.exits[k](x)
            if self.gradient_equilibrium:
                x = GradientRescale.apply(x, float(n_exits - k - 1))
            k += 1
            if k == n_exits:
                break
        return out

    def task_module(self, name: str) -> nn.Module:
        """Exit ``name``'s own network: it stops at that exit."""
        k = [t.name for t in self.tasks].index(name)
        return ExitPath(self.stem, list(self.blocks[: self.exit_after[k] + 1]), self.exits[k])


def build(tasks: tuple[TaskSpec, ...], in_channels: int, depth: int | None = None, width: int | None = None,
          exit_every: int | None = None) -> ResNetSDN:
    """Registry entry: ``tasks`` holds the single label the exits predict."""
    return ResNetSDN(tasks[0], in_channels, depth=depth or 8, width=width or 16, exit_every=exit_every)
