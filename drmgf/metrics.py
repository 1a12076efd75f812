"""Metrics per task kind, accumulated over minibatches, and the NYUv2 Delta_m."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from drmgf.losses import loss_sum, valid_mask
from drmgf.tasks import TaskSpec

HIGHER_IS_BETTER = {"top1", "miou", "pix_acc", "within_11.25", "within_22.5", "within_30"}
DELTA_M_METRICS = (
    ("segmentation", "miou"), ("segmentation", "pix_acc"), ("depth", "abs_err"), ("depth", "rel_err"),
    ("normal", "mean"), ("normal", "median"), ("normal", "within_11.25"), ("normal", "within_22.5"),
    ("normal", "within_30"),
)
NYUV2_BASELINE = (0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915)
METRIC_NAMES = {
    "classification": ("top1",), "segmentation": ("miou", "pix_acc"), "depth": ("abs_err", "rel_err"),
    "normal": ("mean", "median", "within_11.25", "within_22.5", "within_30"),
}
_ANGLE_BINS = 1000  # per degree: the median is exact to 0.001 degrees


class TaskMeter:
    """Accumulates one task's loss and metrics over batches.

    Args:
        task: what the output predicts.
    """

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.loss_sum, self.loss_count, self.count = 0.0, 0, 0
        self.stats: dict[str, torch.Tensor] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().double().cpu()
        self.stats[key] = self.stats[key] + value if key in self.stats else value

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. output/target as in ``drmgf.losses``."""
        total, elements = loss_sum(self.task, output.detach(), target)
        self.loss_sum += float(total)
        self.loss_count += int(elements)
        self.count += output.shape[0]
        getattr(self, f"_update_{self.task.kind}")(output.detach(), target)

    def _update_classification(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self._add("correct", (logits.argmax(1) == target).sum())
        self._add("total", torch.tensor(target.numel()))

    def _update_segmentation(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        c = self.task.num_classes
        valid = target != -1
        pred, gt = logits.argmax(1)[valid], target[valid]
        self._add("confusion", torch.bincount(gt * c + pred, minlength=c * c).view(c, c))

    def _update_depth(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        mask = valid_mask(target)
        err = (pred - target).abs()[mask]
        self._add("abs", err.sum())
        self._add("rel", (err / target[mask].abs()).sum())
        self._add("pixels", mask.sum())

    def _update_normal(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        mask = valid_mask(target)[:, 0]
        cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(1)[mask].clamp(-1, 1)
        angle = torch.rad2deg(torch.acos(cos.double()))
        bins = (angle * _ANGLE_BINS).long().clamp(0, 180 * _ANGLE_BINS)
        self._add("hist", torch.bincount(bins, minlength=180 * _ANGLE_BINS + 1))
        self._add("angle_sum", angle.sum())
        for thr in (11.25, 22.5, 30):
            self._add(f"n{thr}", (angle < thr).sum())
        self._add("pixels", mask.sum())

    def compute(self) -> dict[str, float]:
        """Metrics of everything added so far (plus the mean loss); NaN when nothing was added."""
        if self.count == 0:
            return {"loss": math.nan, **{k: math.nan for k in METRIC_NAMES[self.task.kind]}}
        out = {"loss": self.loss_sum / max(self.loss_count, 1)}
        out.update(getattr(self, f"_compute_{self.task.kind}")())
        return {k: float(v) for k, v in out.items()}

    def _compute_classification(self) -> dict[str, float]:
        return {"top1": float(self.stats["correct"] / self.stats["total"].clamp_min(1))}

    def _compute_segmentation(self) -> dict[str, float]:
        conf = self.stats.get("confusion", torch.zeros(self.task.num_classes, self.task.num_classes))
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if bool(present.any()) else math.nan
        return {"miou": miou, "pix_acc": float(tp.sum() / conf.sum().clamp_min(1))}

    def _compute_depth(self) -> dict[str, float]:
        n = self.stats["pixels"].clamp_min(1)
        return {"abs_err": float(self.stats["abs"] / n), "rel_err": float(self.stats["rel"] / n)}

    def _compute_normal(self) -> dict[str, float]:
        n = self.stats["pixels"].clamp_min(1)
        cum = self.stats["hist"].cumsum(0)
        median_bin = int(torch.searchsorted(cum, n / 2))
        out = {"mean": float(self.stats["angle_sum"] / n), "median": (median_bin + 0.5) / _ANGLE_BINS}
        for thr in (11.25, 22.5, 30):
            out[f"within_{thr:g}"] = float(self.stats[f"n{thr}"] / n)
        return out


def delta_m(task_metrics: dict[str, dict[str, float]], tasks: tuple[TaskSpec, ...],
            baseline: tuple[float, ...]) -> float | None:
    """Delta_m in percent (lower is better): the mean over the 9 NYUv2 metrics of
    (-1)^s_k (M_k - B_k) / B_k * 100, s_k = 1 for higher-is-better metrics (ALGORITHM.md section 6).

    Returns None unless the tasks include one segmentation, one depth and one normal output.
    """
    by_kind = {t.kind: t.name for t in tasks}
    if not all(k in by_kind for k in ("segmentation", "depth", "normal")):
        return None
    terms = []
    for (kind, metric), base in zip(DELTA_M_METRICS, baseline):
        value = task_metrics[by_kind[kind]][metric]
        sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
        terms.append(sign * (value - base) / base * 100.0)
    return sum(terms) / len(terms)


def summarize(task_metrics: dict[str, dict[str, float]], tasks: tuple[TaskSpec, ...],
              baseline: tuple[float, ...] | None = None) -> dict[str, float]:
    """Run-level numbers: mean top-1 over classification outputs, Delta_m for NYUv2-style tasks."""
    summary: dict[str, float] = {}
    top1 = [task_metrics[t.name]["top1"] for t in tasks if t.kind == "classification"]
    if top1:
        summary["mean_top1"] = sum(top1) / len(top1)
    if baseline is not None:
        dm = delta_m(task_metrics, tasks, baseline)
        if dm is not None:
            summary["delta_m"] = dm
    return summary
