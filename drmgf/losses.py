"""Per-task losses by task kind (ALGORITHM.md section 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from drmgf.tasks import TaskSpec


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy. logits: [B, C]; target: [B] class ids."""
    return F.cross_entropy(logits, target)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy ignoring label -1. logits: [B, C, H, W]; target: [B, H, W]."""
    if not bool((target != -1).any()):
        return logits.sum() * 0.0  # keeps the graph alive for a batch with no labelled pixel
    return F.cross_entropy(logits, target, ignore_index=-1)


def valid_mask(target: torch.Tensor) -> torch.Tensor:
    """Pixels with ground truth: any channel non-zero. target: [B, C, H, W] -> [B, 1, H, W] bool."""
    return (target != 0).any(dim=1, keepdim=True)


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 over pixels with ground truth (depth != 0). pred, target: [B, 1, H, W]."""
    mask = valid_mask(target).to(pred.dtype)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity over pixels with ground truth. pred, target: [B, 3, H, W]."""
    mask = valid_mask(target).to(pred.dtype)
    cos = (F.normalize(pred, dim=1) * target).sum(dim=1, keepdim=True)
    return 1.0 - (cos * mask).sum() / mask.sum().clamp_min(1.0)


LOSSES = {
    "classification": classification_loss,
    "segmentation": segmentation_loss,
    "depth": depth_loss,
    "normal": normal_loss,
}


def loss_sum(task: TaskSpec, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-element losses, number of elements) so that means over batches are exact.

    Elements are images (classification) or labelled pixels (dense tasks).
    """
    if task.kind == "classification":
        return F.cross_entropy(output, target, reduction="sum"), torch.tensor(target.numel())
    if task.kind == "segmentation":
        valid = target != -1
        return F.cross_entropy(output, target, ignore_index=-1, reduction="sum"), valid.sum()
    mask = valid_mask(target)
    if task.kind == "depth":
        return ((output - target).abs() * mask).sum(), mask.sum()
    cos = (F.normalize(output, dim=1) * target).sum(dim=1, keepdim=True)
    return ((1.0 - cos) * mask).sum(), mask.sum()


def task_loss(task: TaskSpec, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of one task's output against its target."""
    return LOSSES[task.kind](output, target)


def task_losses(
    tasks: tuple[TaskSpec, ...], outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Loss per output name; the target of each output is looked up by ``task.target``."""
    return {t.name: task_loss(t, outputs[t.name], targets[t.target]) for t in tasks}
