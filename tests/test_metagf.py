"""Meta-GF (ALGORITHM.md section 5): fusion weights, equal weights average, and a period runs."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from drmgf.config import TrainConfig
from drmgf.methods.metagf import MetaGF
from drmgf.train.loop import Trainer, assemble
from tests.test_drmgf import tiny_bundle


def trainer(tmp_path, mode: str) -> Trainer:
    cfg = TrainConfig().replace(model={"model": "mt_resnet", "width": 4}, optim={"epochs": 2, "batch_size": 12},
                                method={"method": "metagf", "metagf_mode": mode, "period_steps": 2},
                                run={"out": str(tmp_path / mode)})
    return Trainer(assemble(cfg, data=tiny_bundle()))


def test_layer_mode_weights_are_sigmoid_of_eta(tmp_path):
    method = trainer(tmp_path, "layer").method
    assert isinstance(method, MetaGF) and method.alpha == 0.1
    name = next(n for n, pl in method.plan.items() if pl.role == "connection")
    with torch.no_grad():
        for k, t in enumerate(method.plan[name].tasks):
            method.eta[t][name.replace(".", "#")].fill_(float(k) - 1)
    expected = torch.sigmoid(torch.arange(len(method.plan[name].tasks), dtype=torch.float32) - 1)[:, None]
    assert_close(method.fusion_weights(name), expected)


def test_channel_mode_weights_are_exp_of_t_eta(tmp_path):
    method = trainer(tmp_path, "channel").method
    name = next(n for n, pl in method.plan.items() if pl.role == "connection")
    tasks = method.plan[name].tasks
    weights = method.fusion_weights(name)
    assert weights.shape[0] == len(tasks)
    assert_close(weights, torch.exp(torch.full_like(weights, float(len(tasks)))))  # eta starts at 1


def test_equal_eta_fuses_to_the_average(tmp_path):
    method = trainer(tmp_path, "channel").method
    names = [n for n, pl in method.plan.items() if pl.role in ("connection", "norm_weight", "norm_bias")]
    params = dict(trainer(tmp_path / "x", "channel").ctx.model.named_parameters())
    w0 = {n: params[n].detach() for n in names}
    stacked = {n: torch.randn(len(method.plan[n].tasks), *w0[n].shape) for n in names}
    fused = method.fused(w0, stacked)
    for n in names:
        assert_close(fused[n], w0[n] + stacked[n].mean(0), rtol=1e-5, atol=1e-6)


def test_a_period_learns_eta_and_keeps_the_model_finite(tmp_path):
    t = trainer(tmp_path, "layer")
    before = {k: p.detach().clone() for k, p in t.method.eta.named_parameters()}
    logs = t.method.train_epoch(t.ctx, 0)
    assert set(t.ctx.task_names) <= set(logs) and "fusion" in logs
    assert any(not torch.equal(before[k], p.detach()) for k, p in t.method.eta.named_parameters())
    assert all(torch.isfinite(p).all() for p in t.ctx.model.parameters())
