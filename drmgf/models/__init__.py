"""Model registry: one file per model, one line per model in ``MODELS``.

A model returns ``dict[task_name -> output]`` and lists its outputs in ``model.tasks``. Models
that can be deployed per task also provide ``task_module(name)``: the sub-network that task uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from drmgf.models import mt_resnet, resnet_sdn, segnet_mtan
from drmgf.tasks import TaskSpec

__all__ = ["MODELS", "build_model", "list_models", "model_tasks"]


@dataclass(frozen=True)
class ModelEntry:
    """How to build a model and which data it fits.

    Attributes:
        build: ``build(tasks, in_channels, depth=, width=, exit_every=) -> nn.Module``.
        help: one line for ``drmgf list``.
        multi_exit: True when every output predicts one label (``--label``).
        kinds: task kinds the model's heads can produce.
    """

    build: Callable[..., nn.Module]
    help: str
    multi_exit: bool
    kinds: tuple[str, ...]


MODELS: dict[str, ModelEntry] = {
    "resnet_sdn": ModelEntry(resnet_sdn.build, "multi-exit CIFAR ResNet (depth 8/20/56), exits exit0..exitK",
                             True, ("classification",)),
    "mt_resnet": ModelEntry(mt_resnet.build, "shared ResNet trunk, one classification head per task",
                            False, ("classification",)),
    "segnet_mtan": ModelEntry(segnet_mtan.build, "SegNet with MTAN task attention (NYUv2), one dense head per task",
                              False, ("segmentation", "depth", "normal")),
}


def list_models() -> list[str]:
    return list(MODELS)


def build_model(name: str, tasks: tuple[TaskSpec, ...], in_channels: int, **options: int | None) -> nn.Module:
    """Build a registered model for ``tasks`` (the single label for multi-exit models)."""
    return MODELS[name].build(tasks, in_channels, **options)


def model_tasks(model: nn.Module, example: torch.Tensor | None = None) -> tuple[str, ...]:
    """Output names of a model: its ``tasks`` attribute, else the keys of one forward's dict."""
    tasks = getattr(model, "tasks", None)
    if tasks:
        return tuple(t.name if isinstance(t, TaskSpec) else str(t) for t in tasks)
    if example is None:
        raise ValueError("model has no `tasks` attribute; pass an example input to discover its outputs")
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(example)
        model.train(was)
    if not isinstance(out, dict):
        raise TypeError(f"a multi-output model must return dict[str, Tensor], got {type(out).__name__}")
    return tuple(out)
