"""DR-MGF pinned down: analytic fusion, equivalences and properties (ALGORITHM.md sections 2-3)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

from drmgf.config import TrainConfig
from drmgf.data.base import DataBundle, holdout
from drmgf.data.shapes import TASKS, generate
from drmgf.methods.drmgf import DRMGF, variables_from_state
from drmgf.methods.fusion import (bn_mixture, connection_weights, convex_fuse, norm_bias_weights,
                                  norm_weight_weights)
from drmgf.methods.period import plan_parameters
from drmgf.methods.routing import effective_weight, lrn_importance, route_gate, routed_weight, slice_norm
from drmgf.methods.sharing import probe_sharing
from drmgf.train.loop import Trainer, assemble


def tiny_bundle(n: int = 48, tasks: tuple = TASKS) -> DataBundle:
    train, val = holdout(generate(n, seed=1), 0.25, seed=0)
    test = generate(16, seed=2)
    return DataBundle("shapes", train, val, test, tasks, (0.4,) * 3, (0.25,) * 3)


def make_trainer(tmp_path, method: str = "drmgf", model: str = "mt_resnet", **method_kw) -> Trainer:
    cfg = TrainConfig().replace(
        model={"model": model, "width": 4}, optim={"epochs": 2, "batch_size": 12},
        method={"method": method, "period_steps": 2, **method_kw}, run={"out": str(tmp_path / "run")},
    )
    return Trainer(assemble(cfg, data=tiny_bundle()))


# --- routes -------------------------------------------------------------------------------------

def test_lrn_importance_matches_formula():
    v = torch.tensor([[3.0, -4.0], [0.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[3.0 / 1.0007**0.75, 4.0 / 1.0007**0.75], [0.0, 1.0 / 1.0001**0.75]], dtype=torch.float64)
    assert_close(lrn_importance(v), expected, rtol=1e-12, atol=0)


def test_route_gate_dominance_weights_current_task():
    ps = torch.tensor([[[1.0]], [[4.0]], [[7.0]]], dtype=torch.float64)  # K = 3 tasks, one connection
    assert_close(route_gate(ps, 1, 10.0), torch.tensor([[(1 + 40 + 7) / 12]], dtype=torch.float64))
    assert_close(route_gate(ps, None, 10.0), torch.tensor([[4.0]], dtype=torch.float64))


def test_effective_weight_sets_slice_norms_to_gate():
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    gate = torch.rand(5, 3, dtype=torch.float64)
    w_eff = effective_weight(w, gate)
    assert_close(slice_norm(w_eff), gate, rtol=1e-12, atol=1e-12)
    cos = (w_eff.flatten(2) * w.flatten(2)).sum(-1) / (slice_norm(w_eff) * slice_norm(w))
    assert_close(cos, torch.ones_like(cos))  # directions unchanged


def test_routed_forward_equal_importance_c1_is_weight_normalised_model():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 3, bias=False))
    x = torch.randn(2, 3, 8, 8)
    v = torch.rand(4, 3) + 0.5
    vs = torch.stack([v, v, v])  # three tasks with equal importance
    routed = {"0.weight": routed_weight(conv[0].weight, vs, current=0, dominance=1.0)}
    manual = copy.deepcopy(conv)
    with torch.no_grad():
        p = lrn_importance(v)
        manual[0].weight.copy_(conv[0].weight / slice_norm(conv[0].weight)[..., None, None] * p[..., None, None])
    assert_close(functional_call(conv, routed, (x,)), manual(x), rtol=1e-5, atol=1e-6)


def test_routes_at_initialisation_leave_the_forward_nearly_unchanged(tmp_path):
    trainer = make_trainer(tmp_path)
    method, ctx = trainer.method, trainer.ctx
    method.begin_period(ctx, 0)
    x = torch.randn(2, 3, 32, 32)
    ctx.model.eval()
    plain = ctx.model(x)
    routed = functional_call(ctx.model, method.routed_params(ctx, "shape"), (x,))
    for name in plain:  # v = ||W[o, i]|| makes W_eff = W up to the LRN denominator (~1e-3 relative)
        assert_close(routed[name], plain[name], rtol=2e-2, atol=2e-3)


# --- fusion: analytic and equivalence --------------------------------------------------------

def test_connection_fusion_by_hand():
    w0 = torch.tensor([[[[1.0]], [[1.0]]]], dtype=torch.float64)  # [O=1, I=2, 1, 1]
    deltas = torch.tensor([[[[[2.0]], [[4.0]]]], [[[[-2.0]], [[0.0]]]]], dtype=torch.float64)  # [K=2, 1, 2, 1, 1]
    vs = torch.tensor([[[3.0, 1.0]], [[1.0, 1.0]]], dtype=torch.float64)
    ss = torch.tensor([[[1.0, 2.0]], [[1.0, -1.0]]], dtype=torch.float64)
    pis = connection_weights(vs, ss)
    assert_close(pis, torch.tensor([[[0.75, 0.5]], [[0.5, 0.5]]], dtype=torch.float64))
    fused = convex_fuse(w0, deltas, pis)
    # slice 0: 1 + (0.75*2 + 0.5*(-2)) / 1.25 = 1.4 ; slice 1: 1 + (0.5*4 + 0.5*0) / 1.0 = 3
    assert_close(fused.flatten(), torch.tensor([1.4, 3.0], dtype=torch.float64))


def test_norm_fusion_weights():
    ss = torch.tensor([[0.5, -2.0], [1.5, 2.0]], dtype=torch.float64)
    assert_close(norm_bias_weights(ss), ss.abs())
    gamma = norm_weight_weights(torch.ones_like(ss), ss)
    assert_close(gamma, ss.abs() / 2)  # |v|/sum|v| = 1/C: the same for every task, so it cancels
    w0, deltas = torch.zeros(2, dtype=torch.float64), torch.tensor([[1.0, 1.0], [3.0, 3.0]], dtype=torch.float64)
    assert_close(convex_fuse(w0, deltas, gamma), convex_fuse(w0, deltas, norm_bias_weights(ss)))


def test_equal_importance_and_scales_give_plain_average():
    torch.manual_seed(1)
    w0 = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    deltas = torch.randn(3, 4, 3, 3, 3, dtype=torch.float64)
    v = torch.rand(4, 3, dtype=torch.float64) + 0.1
    s = torch.full((4, 3), 0.37, dtype=torch.float64)
    fused = convex_fuse(w0, deltas, connection_weights(torch.stack([v] * 3), torch.stack([s] * 3)))
    assert_close(fused, w0 + deltas.mean(0), rtol=1e-12, atol=1e-12)


def test_fusion_is_invariant_to_task_order():
    torch.manual_seed(2)
    w0 = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    deltas = torch.randn(3, 4, 3, 3, 3, dtype=torch.float64)
    vs, ss = torch.randn(3, 4, 3, dtype=torch.float64), torch.randn(3, 4, 3, dtype=torch.float64)
    reference = convex_fuse(w0, deltas, connection_weights(vs, ss))
    for perm in itertools.permutations(range(3)):
        idx = list(perm)
        assert_close(convex_fuse(w0, deltas[idx], connection_weights(vs[idx], ss[idx])), reference,
                     rtol=1e-12, atol=1e-12)


def test_zero_importance_removes_a_tasks_delta_on_that_connection():
    torch.manual_seed(3)
    w0 = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    deltas = torch.randn(2, 2, 2, 3, 3, dtype=torch.float64)
    vs, ss = torch.rand(2, 2, 2, dtype=torch.float64) + 0.1, torch.rand(2, 2, 2, dtype=torch.float64) + 0.1
    vs[1, 0, 1] = 0.0  # task 1 gives no importance to connection (0, 1)
    fused = convex_fuse(w0, deltas, connection_weights(vs, ss))
    changed = deltas.clone()
    changed[1, 0, 1] += 100.0
    fused2 = convex_fuse(w0, changed, connection_weights(vs, ss))
    assert_close(fused2[0, 1], fused[0, 1])  # unaffected
    assert_close(fused[0, 1], w0[0, 1] + deltas[0, 0, 1])  # only task 0 moves it
    assert not torch.allclose(fused2[1], fused[1] + 1.0)  # sanity: other connections still mix


def test_bn_mixture_matches_pooled_moments():
    torch.manual_seed(4)
    a = torch.randn(100000, 3, dtype=torch.float64) * 2 + 1
    b = torch.randn(100000, 3, dtype=torch.float64) * 0.5 - 3
    mu, var = bn_mixture(torch.stack([a.mean(0), b.mean(0)]), torch.stack([a.var(0, unbiased=False), b.var(0, unbiased=False)]))
    pooled = torch.cat([a, b])
    assert_close(mu, pooled.mean(0), rtol=1e-10, atol=1e-10)
    assert_close(var, pooled.var(0, unbiased=False), rtol=1e-10, atol=1e-10)


# --- the method on real models ----------------------------------------------------------------

def test_variables_cover_every_shared_conv(tmp_path):
    trainer = make_trainer(tmp_path, model="resnet_sdn")
    method, model = trainer.method, trainer.ctx.model
    sharing = probe_sharing(model, trainer.ctx.task_names, torch.randn(2, 3, 32, 32))
    plan = plan_parameters(model, sharing)
    params = dict(model.named_parameters())
    state = variables_from_state(method.state())
    convs = [n for n, pl in plan.items() if pl.role == "connection"]
    assert convs and all(params[n].dim() == 4 for n in convs)
    for name in convs:
        assert set(state["importance"][name]) == set(plan[name].tasks)
        assert set(state["scale"][name]) == set(plan[name].tasks)
        for v in state["importance"][name].values():  # v initialised to slice norms
            assert_close(v, slice_norm(params[name].detach()))
        for s in state["scale"][name].values():
            assert torch.all(s == 1e-3)
    bns = [n for n, pl in plan.items() if pl.role in ("norm_weight", "norm_bias")]
    assert bns and all(n in state["scale"] and n not in state["importance"] for n in bns)
    # exit0 does not reach the last stage: no variables of exit0 there
    assert all("exit0" not in plan[n].tasks or n.startswith(("stem", "blocks.0")) for n in convs)


class Recorder(DRMGF):
    """DR-MGF that keeps each task model and the period start, for checking the fusion by hand."""

    def task_model(self, ctx, task, epoch):
        model = super().task_model(ctx, task, epoch)
        self.recorded[task] = {n: t.clone() for n, t in model.items()}
        return model

    def begin_period(self, ctx, epoch):
        super().begin_period(ctx, epoch)
        self.recorded = {}
        self.start = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}


def test_one_period_commits_the_hand_computed_fusion(tmp_path):
    trainer = make_trainer(tmp_path)
    cfg = trainer.run.cfg.method
    method = Recorder(cfg)
    method.setup(trainer.ctx)
    trainer.method = method
    method.train_epoch(trainer.ctx, 0)
    params = dict(trainer.ctx.model.named_parameters())
    for name, pl in method.plan.items():
        w0 = method.start[name]
        deltas = torch.stack([method.recorded[t][name] - w0 for t in pl.tasks])
        if pl.role == "private":  # private parameters only move with their owner
            assert_close(params[name].detach(), method.recorded[pl.tasks[0]][name])
        elif pl.role == "mean":
            assert_close(params[name].detach(), w0 + deltas.mean(0))
        elif pl.role == "connection":
            vs = torch.stack([method.importance[t][name.replace(".", "#")].detach() for t in pl.tasks])
            ss = torch.stack([method.scale[t][name.replace(".", "#")].detach() for t in pl.tasks])
            pis = vs.abs() / vs.abs().sum(-1, keepdim=True) * ss.abs()
            expected = w0 + (pis[..., None, None] * deltas).sum(0) / (pis.sum(0)[..., None, None] + 1e-20)
            assert_close(params[name].detach(), expected, rtol=1e-5, atol=1e-6)
        elif pl.role == "norm_bias":
            ss = torch.stack([method.scale[t][name.replace(".", "#")].detach() for t in pl.tasks]).abs()
            assert_close(params[name].detach(), w0 + (ss * deltas).sum(0) / ss.sum(0), rtol=1e-5, atol=1e-6)


def test_task_pass_starts_from_w0_and_meta_step_learns_s(tmp_path):
    trainer = make_trainer(tmp_path)
    method = Recorder(trainer.run.cfg.method)
    method.setup(trainer.ctx)
    s_before = {k: p.detach().clone() for k, p in method.scale.named_parameters()}
    method.train_epoch(trainer.ctx, 0)
    s_after = dict(method.scale.named_parameters())
    assert any(not torch.equal(s_before[k], s_after[k].detach()) for k in s_before)
    # each task's model differs from the others: they trained separately from the same W0
    tasks = list(method.recorded)
    name = next(n for n, pl in method.plan.items() if pl.role == "connection")
    assert not torch.allclose(method.recorded[tasks[0]][name], method.recorded[tasks[1]][name])


def test_single_task_period_is_ordinary_training(tmp_path):
    single = (TASKS[0],)
    results = {}
    for method in ("ew", "drmgf"):
        cfg = TrainConfig().replace(model={"model": "mt_resnet", "width": 4}, optim={"epochs": 1, "batch_size": 12},
                                    method={"method": method}, run={"out": str(tmp_path / method)})
        trainer = Trainer(assemble(cfg, data=tiny_bundle(tasks=single)))
        trainer.method.train_epoch(trainer.ctx, 0)
        results[method] = trainer.ctx.model.state_dict()
    for key, value in results["ew"].items():
        assert torch.equal(value, results["drmgf"][key]), key


def test_phase_two_freezes_importance_and_smooths_meta_variables(tmp_path):
    smooth = make_trainer(tmp_path / "a", phase_switch=0.0, ema=0.9)
    raw = make_trainer(tmp_path / "b", phase_switch=0.0, ema=0.0)
    v_before = {k: p.detach().clone() for k, p in smooth.method.importance.named_parameters()}
    smooth.method.train_epoch(smooth.ctx, 0)
    raw.method.train_epoch(raw.ctx, 0)
    for k, p in smooth.method.importance.named_parameters():
        assert torch.equal(p.detach(), v_before[k])  # v frozen without routes
    raw_s = dict(raw.method.scale.named_parameters())
    for k, p in smooth.method.scale.named_parameters():  # theta = 0.1 theta_new + 0.9 theta_old
        assert_close(p.detach(), 0.1 * raw_s[k].detach() + 0.9 * 1e-3, rtol=1e-6, atol=1e-9)
    for pa, pb in zip(smooth.ctx.model.parameters(), raw.ctx.model.parameters()):
        assert torch.equal(pa, pb)  # the EMA comes after the commit


def test_learning_rates_halve_at_the_phase_switch(tmp_path):
    trainer = make_trainer(tmp_path, phase_switch=0.5)
    method = trainer.method
    assert [method.lr_factor(e, 4) for e in range(4)] == [1.0, 1.0, 0.5, 0.5]
    assert [method.routes_on(e, 4) for e in range(4)] == [True, True, False, False]
    assert [method.lr_factor(e, 4) for e in range(4)] == [1.0, 1.0, 0.5, 0.5]


def test_reset_between_tasks_restores_optimizer_and_importance(tmp_path):
    a = make_trainer(tmp_path / "a", reset_between_tasks=True)
    b = make_trainer(tmp_path / "b", reset_between_tasks=False)
    a.method.train_epoch(a.ctx, 0)
    b.method.train_epoch(b.ctx, 0)
    diff = [not torch.equal(pa, pb) for pa, pb in zip(a.ctx.model.parameters(), b.ctx.model.parameters())]
    assert any(diff)


@pytest.mark.parametrize("method", ["drmgf", "metagf"])
def test_period_methods_resume_exactly(tmp_path, method):
    full = make_trainer(tmp_path / "full", method=method)
    full.prepare_directory()
    full.train_epoch(0)
    row_full = full.train_epoch(1)
    first = make_trainer(tmp_path / "cut", method=method)
    first.prepare_directory()
    first.train_epoch(0)
    cfg = first.run.cfg.replace(run={"resume": True})
    second = Trainer(assemble(cfg, data=tiny_bundle()))
    second.prepare_directory()
    assert second.start_epoch == 1
    row_resumed = second.train_epoch(1)
    assert row_resumed["test"] == row_full["test"]
    for pa, pb in zip(full.method.parameters(), second.method.parameters()):
        assert torch.equal(pa, pb)


def test_packed_routes_and_fusion_equal_the_per_layer_formulas(tmp_path):
    """Tasks reach different layers of resnet_sdn: the packed arithmetic must ignore the padding."""
    trainer = make_trainer(tmp_path, model="resnet_sdn")
    method, ctx = trainer.method, trainer.ctx
    method.begin_period(ctx, 0)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in list(method.importance.parameters()) + list(method.scale.parameters()):
            p.mul_(torch.rand_like(p) + 0.5)
    params = dict(ctx.model.named_parameters())
    for task in ctx.task_names:
        packed = method.routed_params(ctx, task)
        for name, pl in method.plan.items():
            if pl.role == "connection":
                current = pl.tasks.index(task) if task in pl.tasks else None
                expected = routed_weight(params[name], method._importances(name), current, method.cfg.dominance)
                assert_close(packed[name], expected, rtol=1e-5, atol=1e-7)
    names = [n for n, pl in method.plan.items() if pl.role in method.fused_roles()]
    w0 = {n: params[n].detach().clone() for n in names}
    deltas = {t: {n: torch.randn_like(w0[n]) for n in names if t in method.plan[n].tasks} for t in ctx.task_names}
    packed = method.fused_from(method.fusion_state(w0, deltas))
    reference = method.fused(w0, {n: torch.stack([deltas[t][n] for t in method.plan[n].tasks]) for n in names})
    for n in names:
        assert_close(packed[n], reference[n], rtol=1e-5, atol=1e-6)
