"""Step-level baselines: each aggregator against its published definition, the loss-weighting
rules, gradient equilibrium, and a resumable tiny run of every registered baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from drmgf.config import TrainConfig
from drmgf.data import load_dataset
from drmgf.data.base import DataBundle
from drmgf.errors import ConfigError
from drmgf.methods import METHODS, aggregators
from drmgf.methods.aggregators import SolverError
from drmgf.methods.ge import GradientEquilibrium
from drmgf.methods.gradients import GradientMethod
from drmgf.methods.weighting import GradNorm, dwa_weights, gradnorm_loss, uncertainty_loss
from drmgf.models.resnet_sdn import ResNetSDN
from drmgf.tasks import TaskSpec
from drmgf.train import fit
from drmgf.train.checkpoint import LAST
from drmgf.train.context import TrainContext
from drmgf.train.loop import assemble, make_optimizer

F64 = torch.float64
OTHERS = {"drmgf", "metagf"}  # period methods, tested in their own files
BASELINES = [m for m in METHODS if m not in OTHERS]


def t64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def random_g(T: int, P: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, P, generator=gen, dtype=F64) * (0.5 + torch.rand(T, 1, generator=gen, dtype=F64))


def simplex_grid(T: int, n: int) -> torch.Tensor:
    """Every point of the simplex with coordinates in multiples of 1/(n-1): [N, T]."""
    if T == 2:
        t = torch.linspace(0, 1, n, dtype=F64)
        return torch.stack([t, 1 - t], 1)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i + j < n
    return torch.stack([i[keep], j[keep], n - 1 - i[keep] - j[keep]], 1).to(F64) / (n - 1)


# ---------------------------------------------------------------------------------------------- PCGrad


def test_pcgrad_projects_two_conflicting_gradients() -> None:
    G = t64([[1.0, 0.0], [-1.0, 1.0]])  # g1 . g2 = -1
    # g1' = g1 - (-1)/2 g2 = [0.5, 0.5]; g2' = g2 - (-1)/1 g1 = [0, 1]
    d = aggregators.pcgrad(G, torch.Generator().manual_seed(0))
    assert_close(d, t64([[0.5, 1.5]])[0], rtol=0, atol=1e-15)


def test_pcgrad_leaves_non_conflicting_gradients_summed() -> None:
    G = t64([[1.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    assert bool((aggregators.gram(G) >= 0).all())
    d = aggregators.pcgrad(G, torch.Generator().manual_seed(3))
    assert_close(d, G.sum(0), rtol=0, atol=1e-15)


def test_pcgrad_matches_the_vector_algorithm_for_three_tasks() -> None:
    """Coefficient-space PCGrad == Algorithm 1 on the vectors, with the same random orders."""
    G = random_g(3, seed=5)
    G[1] = -0.8 * G[0] + 0.3 * G[1]  # force conflicts
    d = aggregators.pcgrad(G, torch.Generator().manual_seed(7))
    gen, projected = torch.Generator().manual_seed(7), []
    for i in range(3):
        g = G[i].clone()
        others = [j for j in range(3) if j != i]
        for k in torch.randperm(2, generator=gen).tolist():
            gj = G[others[k]]
            if g @ gj < 0:
                g = g - (g @ gj) / (gj @ gj) * gj
        projected.append(g)
    assert_close(d, torch.stack(projected).sum(0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- MGDA


def test_mgda_two_tasks_closed_form() -> None:
    G = t64([[1.0, 0.0], [0.0, 2.0]])
    # gamma = (g2.g2 - g1.g2) / ||g1 - g2||^2 = 4 / 5: d = [0.8, 0.4], orthogonal to g1 - g2
    assert_close(aggregators.mgda(G), t64([[0.8, 0.4]])[0], rtol=0, atol=1e-15)
    # clipped: g1 is itself the nearest point of the segment
    assert_close(aggregators.mgda(t64([[1.0, 0.0], [2.0, 0.0]])), t64([[1.0, 0.0]])[0], rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgda_three_tasks_is_the_min_norm_point_of_the_hull(seed: int) -> None:
    G = random_g(3, P=4, seed=seed)
    if seed == 2:
        G[2] = 0.2 * G[0] + 0.3 * G[1]  # a gradient inside the hull of the others
    w = aggregators.mgda_weights(aggregators.gram(G))
    assert w.min() >= 0 and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    best_norm = ((simplex_grid(3, 301) @ G) ** 2).sum(1).min()
    norm = float((aggregators.mgda(G) ** 2).sum())
    assert norm <= best_norm + 1e-12
    Mw = aggregators.gram(G) @ w
    assert float(Mw.min()) >= float(w @ Mw) - 1e-10  # optimality: no vertex improves the point


# ---------------------------------------------------------------------------------------------- CAGrad


def cagrad_objective(W: torch.Tensor, G: torch.Tensor, c: float) -> torch.Tensor:
    """F(w) = g_w . g0 + c ||g0|| ||g_w|| for each row of W [N, T]."""
    g0 = G.mean(0)
    gw = W @ G
    return gw @ g0 + c * g0.norm() * gw.norm(dim=1)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_cagrad_matches_a_brute_force_grid_on_two_tasks(c: float, seed: int) -> None:
    G = random_g(2, P=5, seed=seed)
    G[1] = -0.6 * G[0] + 0.5 * G[1]  # conflicting
    grid = simplex_grid(2, 200001)
    values = cagrad_objective(grid, G, c)
    w_grid = grid[values.argmin()]
    g0, gw = G.mean(0), w_grid @ G
    d_grid = g0 + c * g0.norm() / gw.norm() * gw  # d = g0 + sqrt(phi) / ||g_w|| g_w
    d = aggregators.cagrad(G, c)
    assert_close(d, d_grid, rtol=1e-4, atol=1e-6)
    assert float((d - g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-9)  # on the ball's boundary
    # the solver's w is recovered from d's coefficients: a = 1/T + r / ||g_w|| w
    a = aggregators.cagrad_weights(aggregators.gram(G), c)
    w = (a - 0.5) / (a - 0.5).sum()
    assert float(cagrad_objective(w[None], G, c)) <= float(values.min()) + 1e-12


def test_cagrad_three_tasks_beats_a_grid_and_c0_gives_the_mean() -> None:
    G = random_g(3, P=6, seed=4)
    G[2] = -0.7 * G[0] + 0.4 * G[2]
    a = aggregators.cagrad_weights(aggregators.gram(G), 0.4)
    w = (a - 1 / 3) / (a - 1 / 3).sum()
    assert float(w.min()) >= -1e-12
    grid_min = cagrad_objective(simplex_grid(3, 301), G, 0.4).min()
    assert float(cagrad_objective(w[None], G, 0.4)) <= float(grid_min) + 1e-12
    assert_close(aggregators.cagrad(G, 0.0), G.mean(0), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("T", [2, 3, 4])
def test_imtl_equal_projections_weights_sum_to_one_and_paper_closed_form(T: int) -> None:
    G = random_g(T, P=9, seed=T)
    w = aggregators.imtl_weights(aggregators.gram(G))
    d = aggregators.imtl(G)
    units = G / G.norm(dim=1, keepdim=True)
    projections = units @ d
    assert_close(projections, projections[0].expand(T), rtol=1e-10, atol=1e-12)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    # Liu et al. 2021: a_{2:T} = g_1 U^T (D U^T)^{-1}, D = [g_1 - g_t], U = [u_1 - u_t], a_1 = 1 - sum
    D, U = G[0] - G[1:], units[0] - units[1:]
    tail = G[0] @ U.T @ torch.linalg.inv(D @ U.T)
    assert_close(w, torch.cat([1 - tail.sum(0, keepdim=True), tail]), rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("T", [2, 3, 5])
def test_nash_mtl_solves_the_bargaining_equation(T: int) -> None:
    G = random_g(T, P=8, seed=10 + T)
    G[1] = -0.5 * G[0] + 0.4 * G[1]
    M = aggregators.gram(G)
    alpha = aggregators.nash_mtl_weights(M)
    assert bool((alpha > 0).all())
    assert_close(M @ alpha, 1 / alpha, rtol=1e-8, atol=0)


def test_nash_mtl_direction_ignores_the_scale_of_a_task_gradient() -> None:
    G = random_g(3, seed=21)
    scaled = G.clone()
    scaled[0] *= 7.0
    assert_close(aggregators.nash_mtl(scaled), aggregators.nash_mtl(G), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- degenerate inputs


SOLVERS = {
    "pcgrad": lambda G: aggregators.pcgrad(G, torch.Generator().manual_seed(0)),
    "mgda": aggregators.mgda,
    "cagrad": lambda G: aggregators.cagrad(G, 0.4),
    "imtl": aggregators.imtl,
    "nash_mtl": aggregators.nash_mtl,
}


def identical(T: int = 3) -> torch.Tensor:
    return t64([[1.0, -2.0, 0.5]]).repeat(T, 1)


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("case", ["zero", "identical", "one zero row", "opposite"])
def test_degenerate_gradients_give_finite_output_or_a_named_error(name: str, case: str) -> None:
    G = {"zero": torch.zeros(3, 3, dtype=F64), "identical": identical(),
         "one zero row": torch.cat([torch.zeros(1, 3, dtype=F64), random_g(2, P=3)]),
         "opposite": t64([[1.0, 2.0, 0.0], [-2.0, -4.0, 0.0]])}[case]
    try:
        d = SOLVERS[name](G)
    except SolverError as exc:
        assert str(exc).startswith(f"{name}:") and "\n" not in str(exc)
        return
    assert bool(torch.isfinite(d).all())


def test_identical_gradients_give_each_method_its_defined_direction() -> None:
    G, g = identical(), identical()[0]
    assert_close(SOLVERS["pcgrad"](G), 3 * g, rtol=1e-14, atol=0)
    assert_close(SOLVERS["mgda"](G), g, rtol=1e-14, atol=0)
    assert_close(SOLVERS["cagrad"](G), 1.4 * g, rtol=1e-12, atol=0)  # g0 + c ||g0|| g/||g||
    assert_close(SOLVERS["imtl"](G), g, rtol=1e-12, atol=0)
    assert_close(SOLVERS["nash_mtl"](G), math.sqrt(3) * g / g.norm(), rtol=1e-6, atol=0)  # ridge: ~1e-9


def test_undefined_problems_and_unconverged_solvers_raise_naming_the_method() -> None:
    with pytest.raises(SolverError, match="^imtl: task gradient"):
        aggregators.imtl(torch.zeros(3, 4, dtype=F64))
    with pytest.raises(SolverError, match="^nash_mtl: all task gradients are zero"):
        aggregators.nash_mtl(torch.zeros(3, 4, dtype=F64))
    with pytest.raises(SolverError, match="^mgda: .*NaN"):
        aggregators.mgda(t64([[1.0, math.nan], [0.0, 1.0], [1.0, 1.0]]))
    G = random_g(3, seed=8)
    G[1] = -0.7 * G[0] + 0.3 * G[1]
    with pytest.raises(SolverError, match="^nash_mtl: Newton's method did not converge"):
        aggregators.nash_mtl_weights(aggregators.gram(G), max_iter=1)
    with pytest.raises(SolverError, match="^cagrad: the solver did not reach the optimum"):
        aggregators.cagrad_weights(aggregators.gram(G), 0.4, max_iter=0)
    # the minimum-norm point of the zero vector and the mean of zero gradients are the zero direction
    assert_close(aggregators.mgda(torch.zeros(3, 4, dtype=F64)), torch.zeros(4, dtype=F64))
    assert_close(aggregators.cagrad(torch.zeros(3, 4, dtype=F64), 0.4), torch.zeros(4, dtype=F64))


# ---------------------------------------------------------------------------------------------- loss weighting


def test_uncertainty_loss_formula_and_gradient_on_s() -> None:
    losses = t64([[2.0, 0.5, 1.0]])[0]
    s = t64([[0.0, math.log(0.5), 1.0]])[0].requires_grad_(True)
    value = uncertainty_loss(losses, s)
    expected = sum(L / (2 * math.exp(si)) + si / 2 for L, si in zip(losses.tolist(), s.tolist()))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-14)
    (grad,) = torch.autograd.grad(value, s)
    assert_close(grad, -losses * torch.exp(-s.detach()) / 2 + 0.5, rtol=1e-14, atol=0)
    assert float(grad[1]) == pytest.approx(0.0, abs=1e-15)  # s_t = log L_t is the stationary point


def test_dwa_weights_on_a_hand_computed_history() -> None:
    history = [[1.0, 2.0, 3.0], [0.5, 2.0, 6.0]]  # ratios 0.5, 1, 2
    e = [math.exp(0.5 / 2), math.exp(1 / 2), math.exp(2 / 2)]
    expected = [3 * v / sum(e) for v in e]
    assert dwa_weights(history, 2.0).tolist() == pytest.approx(expected, rel=1e-14)
    assert dwa_weights(history[:1], 2.0).tolist() == [1.0, 1.0, 1.0]  # first two epochs: ones
    e = [math.exp(1 / 2), math.exp(0.5 / 2), math.exp(1 / 2)]  # ratios of the last two epochs: 1, 0.5, 1
    assert dwa_weights(history + [[0.5, 1.0, 6.0]], 2.0).tolist() == pytest.approx([3 * v / sum(e) for v in e],
                                                                                  rel=1e-14)
    with pytest.raises(ValueError, match="dwa"):
        dwa_weights([[1.0, 0.0], [1.0, 1.0]], 2.0)


def test_gradnorm_loss_value() -> None:
    w, norms, ratios = t64([[1.0, 1.0]])[0], t64([[2.0, 1.0]])[0], t64([[0.5, 0.5]])[0]
    # G = [2, 1], mean 1.5, r = [1, 1]: |2 - 1.5| + |1 - 1.5| = 1
    assert float(gradnorm_loss(w, norms, ratios, 1.5)) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("norms, ratios, grows", [([2.0, 1.0], [1.0, 1.0], 1), ([1.0, 1.0], [0.9, 0.3], 0)])
def test_gradnorm_moves_weights_towards_balanced_gradient_norms(norms: list[float], ratios: list[float],
                                                                grows: int) -> None:
    method = GradNorm(alpha=1.5, lr=0.025)
    method.task_weights = torch.nn.Parameter(torch.ones(2))
    method._optimizer = torch.optim.Adam([method.task_weights], lr=0.025)
    n, r = torch.tensor(norms), torch.tensor(ratios)
    target = (n.mean() * (r / r.mean()) ** 1.5)
    before = float((n - target).abs().sum())
    method.update_weights(n, r)
    w = method.task_weights.detach()
    assert float(w[grows]) > 1.0 > float(w[1 - grows])  # the task behind its target gains weight
    assert float(w.sum()) == pytest.approx(2.0, abs=1e-6)  # renormalised to T
    after = w * n
    assert float((after - after.mean() * (r / r.mean()) ** 1.5).abs().sum()) < before


# ---------------------------------------------------------------------------------------------- gradient equilibrium


def exit_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(out, y)


def test_gradient_equilibrium_averages_the_exits_gradients_in_the_trunk() -> None:
    torch.manual_seed(0)
    model = ResNetSDN(TaskSpec("shape", "classification", 6), width=4).double().eval()
    x, y = torch.randn(4, 3, 16, 16, dtype=F64), torch.tensor([0, 1, 2, 3])
    stem, block1 = model.stem[0].weight, model.blocks[1].conv1.weight  # before exit0; between exit0 and exit1
    per_exit = []
    for name in ("exit0", "exit1", "exit2"):
        out = model(x)[name]
        per_exit.append(torch.autograd.grad(exit_loss(out, y), [stem, block1], allow_unused=True))
    model.gradient_equilibrium = True
    outputs = model(x)
    total = sum(exit_loss(outputs[n], y) for n in ("exit0", "exit1", "exit2"))
    g_stem, g_block1 = torch.autograd.grad(total, [stem, block1])
    assert per_exit[0][1] is None  # exit0 does not reach block 1
    assert_close(g_stem, sum(g[0] for g in per_exit) / 3, rtol=1e-10, atol=1e-14)
    assert_close(g_block1, (per_exit[1][1] + per_exit[2][1]) / 2, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def tiny_shapes() -> DataBundle:
    return load_dataset(TrainConfig().replace(data={"limit_train": 64, "limit_test": 32}).data)


def run_config(out: Path, method: str, epochs: int, **extra: Any) -> TrainConfig:
    return TrainConfig().replace(
        data={"limit_train": 64, "limit_test": 32},
        model={"model": "resnet_sdn" if method == "ge" else "mt_resnet", "width": 4},
        optim={"epochs": epochs, "batch_size": 16}, method={"method": method},
        run={"out": str(out), "device": "cpu", "eval_batch_size": 32}, **extra)


def numbers(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in ("epoch", "lr", "train", "val", "test")} for row in rows]


@pytest.mark.parametrize("method", BASELINES)
def test_baseline_trains_and_resumes_exactly(tmp_path: Path, tiny_shapes: DataBundle, method: str) -> None:
    straight = fit(run_config(tmp_path / "a", method, 2), data=tiny_shapes)
    rows = numbers(straight)
    assert len(rows) == 2
    for row in rows:
        assert all(math.isfinite(v) for v in row["train"].values()), row["train"]
        assert all(math.isfinite(v) for m in row["test"]["tasks"].values() for v in m.values())
    first = run_config(tmp_path / "b", method, 1)
    fit(first, data=tiny_shapes)
    fit(first.replace(optim={"epochs": 2}, run={"resume": True}), data=tiny_shapes)
    assert numbers(tmp_path / "b") == rows
    a = torch.load(straight / LAST, weights_only=True)
    b = torch.load(tmp_path / "b" / LAST, weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    if method in ("pcgrad", "cagrad", "mgda", "imtl", "nash_mtl", "uw", "dwa", "gradnorm"):
        assert {k for k in rows[-1]["train"] if k.startswith("w_")} == {f"w_{t}" for t in ("shape", "color", "size")}


def test_gradient_method_with_unit_weights_reproduces_joint_training(tiny_shapes: DataBundle, tmp_path: Path) -> None:
    """Equivalence: the per-task machinery with w = 1 gives ew's gradients, lambda included."""

    class SumAll(GradientMethod):
        def weights(self, ctx: TrainContext, M: torch.Tensor) -> torch.Tensor:
            return torch.ones(M.shape[0], dtype=F64)

    run = assemble(run_config(tmp_path, "ew", 1), data=tiny_shapes)
    ctx = TrainContext(model=run.model, tasks=run.tasks, weights={"shape": 2.0, "color": 0.0, "size": 1.0},
                       data=run.data, cfg=run.cfg, device=run.device, optimizer=make_optimizer(run.cfg, run.model))
    method = SumAll()
    method.setup(ctx)
    assert method.sharing is not None and method.sharing.private("color")
    x, targets = next(iter(ctx.batches(0)))
    ctx.weighted_sum(ctx.losses(run.model(x), targets)).backward()
    joint = {n: p.grad.clone() for n, p in run.model.named_parameters()}
    run.model.zero_grad(set_to_none=True)
    logs = method.backward(ctx, ctx.losses(run.model(x), targets))
    assert set(logs) == {"w_shape", "w_size"}  # lambda = 0: color takes no part
    for name, p in run.model.named_parameters():
        assert_close(p.grad, joint[name], rtol=1e-5, atol=1e-6, msg=name)


def test_ge_on_a_model_without_equilibrium_is_a_one_line_config_error(tmp_path: Path,
                                                                       tiny_shapes: DataBundle) -> None:
    cfg = run_config(tmp_path, "ge", 1).replace(model={"model": "mt_resnet"})
    with pytest.raises(ConfigError, match="mt_resnet") as info:
        fit(cfg, data=tiny_shapes)
    assert "\n" not in str(info.value)


def test_ge_turns_the_models_switch_on(tmp_path: Path, tiny_shapes: DataBundle) -> None:
    run = assemble(run_config(tmp_path, "ge", 1), data=tiny_shapes)
    ctx = TrainContext(model=run.model, tasks=run.tasks, weights={t.name: 1.0 for t in run.tasks}, data=run.data,
                       cfg=run.cfg, device=run.device, optimizer=make_optimizer(run.cfg, run.model))
    assert run.model.gradient_equilibrium is False
    GradientEquilibrium().setup(ctx)
    assert run.model.gradient_equilibrium is True
