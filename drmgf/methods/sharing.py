"""Which parameters each task reaches: found by gradient probing (ALGORITHM.md section 1).

One forward, then one backward per output; a parameter is *shared* when more than one output
reaches it and *private* to its task when exactly one does. Probing runs in eval mode so that
BatchNorm running statistics are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Sharing:
    """Parameter reachability of a multi-output model.

    Attributes:
        tasks: output names in model order.
        reach: parameter name -> the tasks whose output reaches it (in ``tasks`` order);
            parameters no output reaches are absent.
    """

    tasks: tuple[str, ...]
    reach: dict[str, tuple[str, ...]]

    def shared(self) -> list[str]:
        """Names of parameters reached by two or more tasks, in model order."""
        return [n for n, ts in self.reach.items() if len(ts) > 1]

    def private(self, task: str) -> list[str]:
        """Names of parameters only ``task`` reaches."""
        return [n for n, ts in self.reach.items() if ts == (task,)]

    def owner(self, name: str) -> str | None:
        """The task owning a private parameter (None for shared or unreached ones)."""
        ts = self.reach.get(name, ())
        return ts[0] if len(ts) == 1 else None

    def to_dict(self) -> dict[str, object]:
        return {"tasks": list(self.tasks), "reach": {k: list(v) for k, v in self.reach.items()}}


def probe_sharing(model: nn.Module, tasks: list[str] | tuple[str, ...], example: torch.Tensor) -> Sharing:
    """Find which task outputs reach which parameters.

    Args:
        model: returns dict name -> output.
        tasks: output names to probe.
        example: an input batch [B, C, H, W] (B >= 2 for BatchNorm models).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outputs = model(example)
            reached: dict[str, list[str]] = {n: [] for n in names}
            for i, task in enumerate(tasks):
                grads = torch.autograd.grad(outputs[task].float().sum(), params, retain_graph=i < len(tasks) - 1,
                                            allow_unused=True)
                for name, grad in zip(names, grads):
                    if grad is not None:
                        reached[name].append(task)
    finally:
        model.train(was_training)
    return Sharing(tasks=tuple(tasks), reach={n: tuple(ts) for n, ts in reached.items() if ts})
