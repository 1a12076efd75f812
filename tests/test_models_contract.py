"""Contract tests over every registered model, plus the multi-exit and sharing properties.

Each entry of ``MODELS`` is built at width 4 on 32x32 inputs for hand-made tasks of the kinds it
declares (multi-exit models: one classification label), so models added to the registry are
covered without a dataset.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from drmgf.losses import task_losses
from drmgf.methods.sharing import probe_sharing
from drmgf.models import MODELS, build_model, list_models, model_tasks
from drmgf.models.resnet_sdn import ResNetSDN, exit_positions
from drmgf.tasks import KINDS, TaskSpec

SIZE, BATCH = 32, 4
LABEL = TaskSpec("shape", "classification", 6)
KIND_TASKS: dict[str, tuple[TaskSpec, ...]] = {
    "classification": (LABEL, TaskSpec("size", "classification", 3)),
    "segmentation": (TaskSpec("semantic", "segmentation", 5),),
    "depth": (TaskSpec("depth", "depth"),),
    "normal": (TaskSpec("normal", "normal"),),
}
# Extra options per model name; every registered model also gets its defaults (at width 4).
EXTRA_OPTIONS: dict[str, list[dict[str, int]]] = {
    "resnet_sdn": [{"depth": 20}, {"depth": 20, "exit_every": 2}],
    "mt_resnet": [{"depth": 14}],
}
CASES = [(name, {}) for name in MODELS] + [
    (name, opts) for name, extra in EXTRA_OPTIONS.items() if name in MODELS for opts in extra
]


def case_id(case: tuple[str, dict[str, int]]) -> str:
    name, opts = case
    return "-".join([name] + [f"{k}{v}" for k, v in opts.items()])


def tasks_for(name: str) -> tuple[TaskSpec, ...]:
    """The tasks a model is built for: the single label of a multi-exit model, else one set per kind."""
    entry = MODELS[name]
    if entry.multi_exit:
        return (LABEL,)
    return tuple(t for kind in entry.kinds for t in KIND_TASKS[kind])


def build(name: str, opts: dict[str, int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, tasks_for(name), 3, width=4, **opts)


def example(seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def expected_shape(task: TaskSpec, batch: int) -> tuple[int, ...]:
    if task.kind == "classification":
        return (batch, task.num_classes)
    return (batch, task.out_channels, SIZE, SIZE)


def random_targets(tasks: tuple[TaskSpec, ...], batch: int, seed: int = 2) -> dict[str, torch.Tensor]:
    """A target per label: class ids, segmentation with ignored pixels, depth with holes, unit normals."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for t in tasks:
        if t.kind == "classification":
            out[t.target] = torch.randint(0, t.num_classes, (batch,), generator=gen)
        elif t.kind == "segmentation":
            out[t.target] = torch.randint(-1, t.num_classes, (batch, SIZE, SIZE), generator=gen)
        elif t.kind == "depth":
            holes = torch.rand(batch, 1, SIZE, SIZE, generator=gen) > 0.2
            out[t.target] = torch.rand(batch, 1, SIZE, SIZE, generator=gen) * holes
        else:
            out[t.target] = nn.functional.normalize(torch.randn(batch, 3, SIZE, SIZE, generator=gen), dim=1)
    return out


@pytest.fixture(params=CASES, ids=case_id)
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, int]]:
    return request.param


# ---------------------------------------------------------------- registry


def test_registry_entries_are_complete() -> None:
    assert list_models() == list(MODELS)
    for name, entry in MODELS.items():
        assert entry.help and "\n" not in entry.help, name
        assert entry.kinds and set(entry.kinds) <= set(KINDS), name
        assert callable(entry.build), name


# ---------------------------------------------------------------- contract over MODELS


def test_outputs_per_task_with_shapes(case: tuple[str, dict[str, int]]) -> None:
    model = build(*case).eval()
    with torch.no_grad():
        out = model(example())
    assert isinstance(out, dict)
    tasks = {t.name: t for t in model.tasks}
    assert set(out) == set(tasks)
    for name, value in out.items():
        assert tuple(value.shape) == expected_shape(tasks[name], BATCH), name
        assert torch.isfinite(value).all(), name


def test_tasks_attribute_matches_output_keys(case: tuple[str, dict[str, int]]) -> None:
    name, _ = case
    model = build(*case).eval()
    with torch.no_grad():
        out = model(example())
    assert all(isinstance(t, TaskSpec) for t in model.tasks)
    assert tuple(t.name for t in model.tasks) == tuple(out)  # same names, same order
    assert model_tasks(model) == tuple(out)
    if MODELS[name].multi_exit:
        assert [t.name for t in model.tasks] == [f"exit{k}" for k in range(len(out))]
        assert {(t.kind, t.num_classes, t.target) for t in model.tasks} == {("classification", 6, "shape")}
    else:
        assert tuple(model.tasks) == tasks_for(name)


def test_every_parameter_gets_a_gradient_from_the_sum_of_losses(case: tuple[str, dict[str, int]]) -> None:
    model = build(*case).train()
    out = model(example())
    losses = task_losses(tuple(model.tasks), out, random_targets(tuple(model.tasks), BATCH))
    sum(losses.values()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets an all-zero gradient"


def test_task_module_reproduces_the_models_output(case: tuple[str, dict[str, int]]) -> None:
    model = build(*case).eval()
    if not hasattr(model, "task_module"):
        pytest.skip(f"{case[0]} has no task_module (not deployable per task)")
    x = example()
    with torch.no_grad():
        full = model(x)
        for t in model.tasks:
            assert_close(model.task_module(t.name)(x), full[t.name], rtol=1e-6, atol=1e-6, msg=t.name)


def test_task_module_holds_exactly_the_parameters_its_task_reaches(case: tuple[str, dict[str, int]]) -> None:
    """Equivalence of two definitions of a task's route: the deployable sub-network and gradient probing."""
    model = build(*case)
    if not hasattr(model, "task_module"):
        pytest.skip(f"{case[0]} has no task_module (not deployable per task)")
    names = [t.name for t in model.tasks]
    sharing = probe_sharing(model, names, example(batch=2))
    by_id = {id(p): n for n, p in model.named_parameters()}
    for t in names:
        in_module = {by_id[id(p)] for p in model.task_module(t).parameters()}
        reached = {n for n, ts in sharing.reach.items() if t in ts}
        assert in_module == reached, t


def test_probe_sharing_restores_mode_and_leaves_batchnorm_statistics(case: tuple[str, dict[str, int]]) -> None:
    model = build(*case).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    probe_sharing(model, [t.name for t in model.tasks], example(batch=2))
    assert model.training
    for k, v in model.state_dict().items():
        assert_close(v, buffers[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------- mt_resnet


def test_mt_resnet_trunk_is_shared_and_heads_are_private() -> None:
    model = build("mt_resnet", {})
    names = [t.name for t in model.tasks]
    sharing = probe_sharing(model, names, example(batch=2))
    trunk = [f"trunk.{n}" for n, _ in model.trunk.named_parameters()]
    assert sharing.shared() == trunk
    for t in names:
        assert sharing.private(t) == [f"heads.{t}.{n}" for n, _ in model.heads[t].named_parameters()]
        assert all(sharing.owner(n) == t for n in sharing.private(t))
    assert all(sharing.owner(n) is None for n in trunk)
    assert set(sharing.reach) == {n for n, _ in model.named_parameters()}


def test_mt_resnet_rejects_dense_tasks() -> None:
    with pytest.raises(ValueError, match="classification heads only"):
        build_model("mt_resnet", (LABEL, TaskSpec("depth", "depth")), 3, width=4)


# ---------------------------------------------------------------- resnet_sdn


@pytest.mark.parametrize(("depth", "every", "expected"), [
    (8, None, [0, 1, 2]), (20, None, [2, 5, 8]), (20, 2, [1, 3, 5, 7, 8]), (20, 4, [3, 7, 8]), (8, 5, [2]),
])
def test_resnet_sdn_exit_positions(depth: int, every: int | None, expected: list[int]) -> None:
    assert exit_positions(depth, every) == expected
    model = ResNetSDN(LABEL, depth=depth, width=4, exit_every=every)
    assert len(model.tasks) == len(expected) and model.exit_after == expected


def test_resnet_sdn_rejects_bad_depth_and_dense_label() -> None:
    with pytest.raises(ValueError, match="--depth must be 6n\\+2"):
        build_model("resnet_sdn", (LABEL,), 3, width=4, depth=10)
    with pytest.raises(ValueError, match="classification label"):
        build_model("resnet_sdn", (TaskSpec("depth", "depth"),), 3, width=4)


@pytest.mark.parametrize("every", [None, 2])
def test_resnet_sdn_exit_does_not_depend_on_later_blocks(every: int | None) -> None:
    torch.manual_seed(0)
    model = ResNetSDN(LABEL, depth=20, width=4, exit_every=every).eval()
    x = example()
    names = [t.name for t in model.tasks]
    with torch.no_grad():
        before = model(x)
        for k, last_block in enumerate(model.exit_after[:-1]):
            for block in model.blocks[last_block + 1:]:
                for p in block.parameters():
                    p.add_(torch.randn_like(p))
            after = model(x)
            for j, name in enumerate(names):
                if j <= k:
                    assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
                else:  # the perturbation is real: later exits see it
                    assert not torch.allclose(after[name], before[name]), name
            before = after


def test_resnet_sdn_probe_sharing_follows_the_exits() -> None:
    torch.manual_seed(0)
    model = ResNetSDN(LABEL, depth=20, width=4, exit_every=None)
    names = [t.name for t in model.tasks]
    sharing = probe_sharing(model, names, example(batch=2))
    for n, _ in model.stem.named_parameters():
        assert sharing.reach[f"stem.{n}"] == tuple(names)
    for i, block in enumerate(model.blocks):
        users = tuple(name for name, pos in zip(names, model.exit_after) if pos >= i)
        for n, _ in block.named_parameters():
            assert sharing.reach[f"blocks.{i}.{n}"] == users, (i, n)
    for k, head in enumerate(model.exits):
        assert sharing.private(names[k])[-len(list(head.parameters())):] == [
            f"exits.{k}.{n}" for n, _ in head.named_parameters()]
    # blocks after the second-to-last exit are private to the last exit
    assert sharing.owner(f"blocks.{len(model.blocks) - 1}.conv1.weight") == names[-1]


def test_resnet_sdn_gradient_equilibrium_averages_the_exits_gradients() -> None:
    """GE: the trunk gradient at a point is the mean of the gradients of the exits reaching it.

    So with the plain sum of exit losses, a block between exit k-1 and exit k gets 1/(n - k) of its
    gradient without GE (the stem: 1/n), and exit heads keep theirs. Forward values do not change.
    """
    torch.manual_seed(0)
    model = ResNetSDN(LABEL, depth=20, width=4, exit_every=2).double()
    x = example().double()
    targets = random_targets((LABEL,), BATCH)
    tasks, n = tuple(model.tasks), len(model.tasks)

    def grads(ge: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad()
        model.gradient_equilibrium = ge
        out = model(x)
        sum(task_losses(tasks, out, targets).values()).backward()
        return {k: v.detach() for k, v in out.items()}, {k: p.grad.clone() for k, p in model.named_parameters()}

    out_plain, g_plain = grads(False)
    out_ge, g_ge = grads(True)
    for name in out_plain:
        assert_close(out_ge[name], out_plain[name], rtol=0, atol=0)
    segment = [sum(pos < i for pos in model.exit_after) for i in range(len(model.blocks))]
    for pname, g in g_plain.items():
        if pname.startswith("stem."):
            scale = 1.0 / n
        elif pname.startswith("blocks."):
            scale = 1.0 / (n - segment[int(pname.split(".")[1])])
        else:
            scale = 1.0
        assert_close(g_ge[pname], g * scale, rtol=1e-10, atol=1e-12, msg=pname)


# ---------------------------------------------------------------- model_tasks


class _DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.conv(x).mean((2, 3))
        return {"b": z, "a": z * 2}


class _TensorNet(_DictNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.conv(x)


def test_model_tasks_from_forward_keys_without_touching_mode() -> None:
    net = _DictNet().train()
    with pytest.raises(ValueError, match="example input"):
        model_tasks(net)
    assert model_tasks(net, example(batch=2)) == ("b", "a")
    assert net.training
    with pytest.raises(TypeError, match="dict"):
        model_tasks(_TensorNet(), example(batch=2))
