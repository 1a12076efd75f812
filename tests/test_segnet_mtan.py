"""Tests of the ``segnet_mtan`` model: shapes, gradients, per-task modules, width, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from drmgf.losses import task_losses
from drmgf.models import MODELS, build_model
from drmgf.models.segnet_mtan import MaxUnpool, SegNetMTAN, build, unpool_couplings
from drmgf.tasks import TaskSpec

TASKS = (TaskSpec("semantic", "segmentation", 13), TaskSpec("depth", "depth"), TaskSpec("normal", "normal"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_model(width: int = 4) -> SegNetMTAN:
    return build(TASKS, 3, width=width)


def random_targets(batch: int, size: int) -> dict[str, torch.Tensor]:
    """Dense targets with ground truth at every pixel."""
    return {
        "semantic": torch.randint(0, 13, (batch, size, size)),
        "depth": torch.rand(batch, 1, size, size) + 0.1,
        "normal": F.normalize(torch.randn(batch, 3, size, size), dim=1),
    }


def total_loss(model: SegNetMTAN, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(task_losses(TASKS, model(x), targets).values())).sum()


def expected_params(width: int, in_channels: int, out_channels: list[int]) -> int:
    """Parameter count derived by hand from the architecture (convs before BN have no bias).

    Backbone 3x3 convs: sum of cin*cout is 399 w^2 (encoder, after the input layer) + 277 w^2
    (decoder); BN 132 w + 92 w. Shared attention convs: 277 w^2, BN 92 w. Per task: masks
    446 w^2 + 279 w^2 of 1x1 weights and 156 w of BN, head 9 w^2 + w + (w + 1) * out.
    """
    w = width
    shared = 9 * (676 * w * w + in_channels * w) + 224 * w + 9 * 277 * w * w + 92 * w
    per_task = sum(734 * w * w + 157 * w + (w + 1) * out for out in out_channels)
    return shared + per_task


def test_registered() -> None:
    entry = MODELS["segnet_mtan"]
    assert not entry.multi_exit
    assert set(entry.kinds) == {"segmentation", "depth", "normal"}
    model = build_model("segnet_mtan", TASKS, 3, depth=99, width=4, exit_every=3)  # depth, exit_every ignored
    assert [t.name for t in model.tasks] == ["semantic", "depth", "normal"]


@pytest.mark.parametrize("size", [64, 32])
def test_output_shapes(size: int) -> None:
    out = make_model()(torch.randn(2, 3, size, size))
    assert list(out) == ["semantic", "depth", "normal"]
    for t in TASKS:
        assert out[t.name].shape == (2, t.out_channels, size, size)
        assert torch.isfinite(out[t.name]).all()


def test_normals_have_unit_length() -> None:
    model = make_model().eval()
    with torch.no_grad():
        normals = model(torch.randn(2, 3, 32, 32))["normal"]
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient() -> None:
    model = make_model()
    total_loss(model, torch.randn(2, 3, 64, 64), random_targets(2, 64)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("task", [t.name for t in TASKS])
def test_task_module_matches_full_model(task: str) -> None:
    model = make_model().eval()
    x = torch.randn(2, 3, 32, 32)
    path = model.task_module(task)
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in path.parameters())  # shared, not copied
    with torch.no_grad():
        torch.testing.assert_close(path(x), model(x)[task], rtol=0, atol=0)


def test_task_module_uses_only_its_branch() -> None:
    model = make_model()
    path_params = {id(p) for p in model.task_module("depth").parameters()}
    assert not any(id(p) in path_params for p in model.branches["semantic"].parameters())
    assert not any(id(p) in path_params for p in model.heads["normal"].parameters())
    with pytest.raises(KeyError, match="no task 'edges'"):
        model.task_module("edges")


@pytest.mark.parametrize("shape", [(2, 3, 48, 64), (2, 3, 64, 40), (3, 64, 64)])
def test_bad_input_size_raises(shape: tuple[int, ...]) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="segnet_mtan"):
        model(torch.randn(*shape))
    with pytest.raises(ValueError, match="segnet_mtan"):
        model.task_module("depth")(torch.randn(*shape))


def test_rejects_tasks_it_cannot_predict() -> None:
    with pytest.raises(ValueError, match="dense heads only"):
        build((TaskSpec("shape", "classification", 3),), 3)
    with pytest.raises(ValueError, match="at least one task"):
        build((), 3)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_parameter_count_scales_with_width(width: int) -> None:
    model = build(TASKS, 3, width=width)
    assert sum(p.numel() for p in model.parameters()) == expected_params(width, 3, [13, 1, 3])


def test_default_width_and_other_task_sets() -> None:
    model = build((TaskSpec("depth", "depth"),), 1)
    assert sum(p.numel() for p in model.parameters()) == expected_params(8, 1, [1])
    assert model(torch.randn(2, 1, 32, 32))["depth"].shape == (2, 1, 32, 32)


def test_adam_reduces_the_loss_on_a_fixed_batch() -> None:
    model = make_model()
    x, targets = torch.randn(2, 3, 32, 32), random_targets(2, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = total_loss(model, x, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses  # about 0.9 over seeds 0-4; random labels cap the gain


def test_max_unpool_places_values_at_the_maxima() -> None:
    x = torch.randn(2, 3, 8, 8)
    pooled, idx = F.max_pool2d(x, 2, stride=2, return_indices=True)
    up = MaxUnpool()(pooled, idx)
    is_max = x == F.interpolate(pooled, scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(up, torch.where(is_max, x, torch.zeros_like(x)), rtol=0, atol=0)


def test_unpool_couplings_pair_equal_widths() -> None:
    pairs = unpool_couplings(make_model())
    assert len(pairs) == 5
    assert [a.out_channels for a, _ in pairs] == [b.out_channels for _, b in pairs] == [32, 32, 16, 8, 4]
