"""Losses and metrics against hand-computed values on tiny tensors (ALGORITHM.md section 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from drmgf.losses import (
    LOSSES, classification_loss, depth_loss, normal_loss, segmentation_loss, task_losses,
)
from drmgf.metrics import (
    DELTA_M_METRICS, HIGHER_IS_BETTER, NYUV2_BASELINE, TaskMeter, delta_m, summarize,
)
from drmgf.tasks import KINDS, TaskSpec

CLS = TaskSpec("shape", "classification", 3)
SEG = TaskSpec("semantic", "segmentation", 3)
DEPTH = TaskSpec("depth", "depth")
NORMAL = TaskSpec("normal", "normal")
DENSE = (SEG, DEPTH, NORMAL)
LN2, LN3 = math.log(2.0), math.log(3.0)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def one_hot_logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits whose argmax over dim 1 is ``pred``. pred: [B, H, W] -> [B, C, H, W]."""
    return torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).double()


def normals_at_angles(degrees: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions at known angles from target (0, 0, 1), as [1, 3, 1, N] (pred scaled by 3)."""
    theta = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    pred = torch.stack([torch.sin(theta), torch.zeros_like(theta), torch.cos(theta)]) * 3.0
    target = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).view(3, 1).expand(3, len(degrees))
    return pred.view(1, 3, 1, -1), target.reshape(1, 3, 1, -1).clone()


# ---------------------------------------------------------------- losses


def test_losses_registry_covers_every_task_kind() -> None:
    assert set(LOSSES) == set(KINDS)


def test_classification_loss_is_cross_entropy_by_hand() -> None:
    # row 0: softmax(ln2, 0, 0)[0] = 2/4 -> ln 2; row 1: uniform over 3 -> ln 3
    logits = torch.tensor([[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loss = classification_loss(logits, torch.tensor([0, 2]))
    assert_close(loss, scalar((LN2 + LN3) / 2), rtol=0, atol=1e-12)


def test_segmentation_loss_ignores_label_minus_one() -> None:
    # three pixels, two classes: zeros -> ln 2; (ln3, 0) with label 0 -> ln(4/3); the third is ignored
    logits = torch.tensor([[0.0, LN3, LN3], [0.0, 0.0, 0.0]], dtype=torch.float64).view(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, -1]]])
    expected = (LN2 + math.log(4 / 3)) / 2
    assert_close(segmentation_loss(logits, target), scalar(expected), rtol=0, atol=1e-12)
    # counting that pixel (label 1 instead of -1) would change the value
    relabelled = torch.tensor([[[1, 0, 1]]])
    assert float(segmentation_loss(logits, relabelled)) != pytest.approx(expected)


def test_segmentation_loss_of_an_all_ignored_batch_is_zero_with_a_gradient() -> None:
    logits = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((2, 2, 2), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert_close(logits.grad, torch.zeros_like(logits), rtol=0, atol=0)


def test_depth_loss_is_l1_over_pixels_with_depth() -> None:
    target = torch.tensor([[0.0, 2.0], [3.0, 0.0]], dtype=torch.float64).view(1, 1, 2, 2)
    pred = torch.tensor([[5.0, 1.0], [1.0, 7.0]], dtype=torch.float64).view(1, 1, 2, 2)
    # valid pixels: |1-2| = 1 and |1-3| = 2; the zero-depth pixels (errors 5 and 7) do not count
    assert_close(depth_loss(pred, target), scalar(1.5), rtol=0, atol=1e-12)


def test_normal_loss_is_one_minus_masked_cosine() -> None:
    # pixel 0: same direction (pred length 2) -> cos 1; pixel 1: orthogonal -> cos 0; pixel 2: no ground truth
    target = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    pred = torch.tensor([[0.0, 0.0, -5.0], [0.0, 1.0, 0.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    loss = normal_loss(pred.view(1, 3, 1, 3), target.view(1, 3, 1, 3))
    assert_close(loss, scalar(0.5), rtol=0, atol=1e-12)


def test_task_losses_look_targets_up_by_task_target() -> None:
    exits = (CLS.as_target("exit0"), CLS.as_target("exit1"))
    logits = torch.tensor([[LN2, 0.0, 0.0]], dtype=torch.float64)
    out = task_losses(exits, {"exit0": logits, "exit1": logits.flip(1)}, {"shape": torch.tensor([0])})
    assert set(out) == {"exit0", "exit1"}
    assert_close(out["exit0"], scalar(LN2), rtol=0, atol=1e-12)
    assert_close(out["exit1"], scalar(math.log(4.0)), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- metrics


def test_top1_and_mean_loss() -> None:
    meter = TaskMeter(CLS)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 1])
    meter.update(logits, target)
    result = meter.compute()
    assert set(result) == {"loss", "top1"}
    assert result["top1"] == 0.75
    assert result["loss"] == pytest.approx(float(classification_loss(logits, target)), abs=1e-12)


def test_miou_excludes_classes_absent_from_gt_and_prediction() -> None:
    # gt 0,0,0,1,1 / pred 0,0,1,1,0 (the last pixel is ignored and predicts class 2)
    # confusion [[2, 1, 0], [1, 1, 0], [0, 0, 0]]: IoU_0 = 2/4, IoU_1 = 1/3, class 2 absent
    gt = torch.tensor([[[0, 0, 0, 1, 1, -1]]])
    pred = torch.tensor([[[0, 0, 1, 1, 0, 2]]])
    meter = TaskMeter(SEG)
    meter.update(one_hot_logits(pred, 3), gt)
    assert_close(meter.stats["confusion"], torch.tensor([[2, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float64))
    result = meter.compute()
    assert result["miou"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-12)
    assert result["pix_acc"] == pytest.approx(3 / 5, abs=1e-12)


def test_miou_counts_a_class_that_is_only_predicted_as_zero() -> None:
    gt = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 0, 1, 2]]])  # class 2 never in gt but predicted once: IoU 0
    meter = TaskMeter(SEG)
    meter.update(one_hot_logits(pred, 3), gt)
    result = meter.compute()
    assert result["miou"] == pytest.approx((1.0 + 1 / 2 + 0.0) / 3, abs=1e-12)
    assert result["pix_acc"] == pytest.approx(3 / 4, abs=1e-12)


def test_depth_abs_and_rel_error_over_pixels_with_depth() -> None:
    target = torch.tensor([2.0, 4.0, 0.0], dtype=torch.float64).view(1, 1, 1, 3)
    pred = torch.tensor([1.0, 5.0, 9.0], dtype=torch.float64).view(1, 1, 1, 3)
    meter = TaskMeter(DEPTH)
    meter.update(pred, target)
    result = meter.compute()
    assert result["abs_err"] == pytest.approx(1.0, abs=1e-12)
    assert result["rel_err"] == pytest.approx((1 / 2 + 1 / 4) / 2, abs=1e-12)
    assert result["loss"] == pytest.approx(1.0, abs=1e-12)


def test_normal_angle_statistics_on_known_angles() -> None:
    pred, target = normals_at_angles([5.0, 15.0, 25.0, 40.0, 90.0])
    # one more pixel without ground truth (target 0) and a wild prediction: excluded
    pred = torch.cat([pred, torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1)], dim=3)
    target = torch.cat([target, torch.zeros(1, 3, 1, 1, dtype=torch.float64)], dim=3)
    meter = TaskMeter(NORMAL)
    meter.update(pred, target)
    result = meter.compute()
    assert result["mean"] == pytest.approx(35.0, abs=1e-9)
    assert result["median"] == pytest.approx(25.0, abs=1e-3)  # histogram bins of 0.001 degrees
    assert result["within_11.25"] == pytest.approx(1 / 5, abs=1e-12)
    assert result["within_22.5"] == pytest.approx(2 / 5, abs=1e-12)
    assert result["within_30"] == pytest.approx(3 / 5, abs=1e-12)


def _random_batch(task: TaskSpec, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 outputs and targets of ``n`` images (dense: 4x4 with about 30% pixels unlabelled)."""
    f64 = {"generator": gen, "dtype": torch.float64}
    if task.kind == "classification":
        return torch.randn(n, task.num_classes, **f64), torch.randint(0, task.num_classes, (n,), generator=gen)
    if task.kind == "segmentation":
        labels = torch.randint(-1, task.num_classes, (n, 4, 4), generator=gen)
        return torch.randn(n, task.num_classes, 4, 4, **f64), labels
    keep = torch.rand(n, 1, 4, 4, **f64) > 0.3
    if task.kind == "depth":
        return torch.rand(n, 1, 4, 4, **f64), (torch.rand(n, 1, 4, 4, **f64) + 0.5) * keep
    target = torch.nn.functional.normalize(torch.randn(n, 3, 4, 4, **f64), dim=1)
    return torch.randn(n, 3, 4, 4, **f64), target * keep


@pytest.mark.parametrize("task", [CLS, *DENSE], ids=lambda t: t.kind)
def test_accumulating_two_batches_equals_one_big_batch(task: TaskSpec) -> None:
    gen = torch.Generator().manual_seed(3)
    output, target = _random_batch(task, 7, gen)
    whole, parts = TaskMeter(task), TaskMeter(task)
    whole.update(output, target)
    parts.update(output[:3], target[:3])
    parts.update(output[3:], target[3:])
    a, b = whole.compute(), parts.compute()
    assert set(a) == set(b)
    # "loss" is an image-weighted mean of batch means: exact only where the per-batch mean is per image
    keys = list(a) if task.kind == "classification" else [k for k in a if k != "loss"]
    for key in keys:
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key


# ---------------------------------------------------------------- Delta_m


def _metrics_from(values: tuple[float, ...]) -> dict[str, dict[str, float]]:
    names = {t.kind: t.name for t in DENSE}
    out: dict[str, dict[str, float]] = {t.name: {} for t in DENSE}
    for (kind, metric), value in zip(DELTA_M_METRICS, values):
        out[names[kind]][metric] = value
    return out


def test_delta_m_constants_match_algorithm_md() -> None:
    assert NYUV2_BASELINE == (0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915)
    assert [m for _, m in DELTA_M_METRICS] == [
        "miou", "pix_acc", "abs_err", "rel_err", "mean", "median", "within_11.25", "within_22.5", "within_30"]
    higher = {m for _, m in DELTA_M_METRICS} & HIGHER_IS_BETTER
    assert higher == {"miou", "pix_acc", "within_11.25", "within_22.5", "within_30"}


def test_delta_m_of_the_baseline_is_zero() -> None:
    assert delta_m(_metrics_from(NYUV2_BASELINE), DENSE, NYUV2_BASELINE) == pytest.approx(0.0, abs=1e-12)


def test_delta_m_better_miou_is_negative_and_worse_depth_is_positive() -> None:
    better = list(NYUV2_BASELINE)
    better[0] *= 1.10  # mIoU 10% higher: -10/9 percent
    assert delta_m(_metrics_from(tuple(better)), DENSE, NYUV2_BASELINE) == pytest.approx(-10 / 9, abs=1e-9)
    worse = list(NYUV2_BASELINE)
    worse[2] *= 1.10  # depth abs error 10% higher (worse): +10/9 percent
    assert delta_m(_metrics_from(tuple(worse)), DENSE, NYUV2_BASELINE) == pytest.approx(10 / 9, abs=1e-9)


@pytest.mark.parametrize("index", range(9))
def test_delta_m_sign_of_each_metric(index: int) -> None:
    values = list(NYUV2_BASELINE)
    values[index] *= 1.01
    _, metric = DELTA_M_METRICS[index]
    expected = (-1.0 if metric in HIGHER_IS_BETTER else 1.0) * 1.0 / 9
    assert delta_m(_metrics_from(tuple(values)), DENSE, NYUV2_BASELINE) == pytest.approx(expected, abs=1e-9)


def test_delta_m_needs_segmentation_depth_and_normal() -> None:
    assert delta_m({"shape": {"top1": 1.0}}, (CLS,), NYUV2_BASELINE) is None
    assert delta_m(_metrics_from(NYUV2_BASELINE), (SEG, DEPTH), NYUV2_BASELINE) is None


def test_summarize_mean_top1_and_delta_m() -> None:
    tasks = (CLS, CLS.as_target("exit1"))
    summary = summarize({"shape": {"top1": 0.5}, "exit1": {"top1": 1.0}}, tasks)
    assert summary == {"mean_top1": 0.75}
    dense = summarize(_metrics_from(NYUV2_BASELINE), DENSE, NYUV2_BASELINE)
    assert dense == {"delta_m": pytest.approx(0.0, abs=1e-12)}
    assert summarize(_metrics_from(NYUV2_BASELINE), DENSE) == {}  # no baseline, no Delta_m
