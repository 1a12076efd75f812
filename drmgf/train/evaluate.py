"""Evaluation of a multi-output model on a split."""

from __future__ import annotations

import torch
from torch import nn

from drmgf.data.base import DataBundle, Split, iterate, normalize
from drmgf.metrics import TaskMeter, summarize
from drmgf.tasks import TaskSpec


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    tasks: tuple[TaskSpec, ...],
    data: DataBundle,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    baseline: tuple[float, ...] | None = None,
) -> dict[str, dict]:
    """Metrics of every output on ``split`` (eval mode, no gradient).

    Returns:
        {"tasks": {name: {metric: value}}, "summary": {"mean_top1"|"delta_m": value}}.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    meters = {t.name: TaskMeter(t) for t in tasks}
    for images, targets in iterate(split, batch_size):
        outputs = model(normalize(images, data.mean, data.std).to(device))
        for t in tasks:
            meters[t.name].update(outputs[t.name], targets[t.target].to(device))
    model.train(was_training)
    per_task = {name: meter.compute() for name, meter in meters.items()}
    return {"tasks": per_task, "summary": summarize(per_task, tasks, baseline)}


def selection_score(result: dict[str, dict]) -> float:
    """One number to pick the best epoch on validation (higher is better)."""
    summary = result["summary"]
    if "mean_top1" in summary:
        return float(summary["mean_top1"])
    if "delta_m" in summary:
        return -float(summary["delta_m"])
    return -sum(m["loss"] for m in result["tasks"].values())
