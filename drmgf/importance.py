"""Reading learned importance: filter scores, dominance shares and per-layer summaries.

Used by ``drmgf inspect`` and by the exporter's route rules (ALGORITHM.md section 4).
"""

from __future__ import annotations

import torch

from drmgf.methods.fusion import connection_weights


def filter_scores(v: torch.Tensor) -> torch.Tensor:
    """r[o] = sum_i |v[o, i]|, the filter's learned magnitude. v: [O, I] -> [O]."""
    return v.abs().sum(dim=1)


def dominance_shares(vs: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """d_t[o] = sum_i pi_t[o, i] / sum_k sum_i pi_k[o, i].

    Args:
        vs, ss: [K, O, I] importance and fusion scales of the K tasks reaching a layer.
    Returns:
        [K, O], columns summing to 1 (uniform where every pi is zero).
    """
    per_filter = connection_weights(vs, ss).sum(dim=2)
    total = per_filter.sum(dim=0, keepdim=True)
    uniform = torch.full_like(per_filter, 1.0 / per_filter.shape[0])
    return torch.where(total > 0, per_filter / total.clamp_min(1e-30), uniform)


def mass_count(scores: torch.Tensor, fraction: float = 0.9) -> int:
    """How many of the largest scores hold ``fraction`` of their total. scores: [O]."""
    ordered = scores.sort(descending=True).values
    cum = ordered.cumsum(0) / ordered.sum().clamp_min(1e-30)
    return int((cum < fraction).sum()) + 1


def layer_summary(name: str, vs: dict[str, torch.Tensor], ss: dict[str, torch.Tensor]) -> list[dict[str, object]]:
    """One row per task for a shared conv: how concentrated its importance is, how often it dominates.

    Args:
        name: parameter name of the conv weight.
        vs, ss: task -> v [O, I], task -> s [O, I].
    """
    tasks = list(vs)
    d = dominance_shares(torch.stack([vs[t] for t in tasks]), torch.stack([ss[t] for t in tasks]))
    winners = d.argmax(dim=0)
    rows = []
    for k, task in enumerate(tasks):
        r = filter_scores(vs[task])
        rows.append({
            "layer": name, "task": task, "filters": int(r.numel()),
            "score_mean": float(r.mean()), "score_max_over_mean": float(r.max() / r.mean().clamp_min(1e-30)),
            "filters_for_90pct": mass_count(r, 0.9), "mean_share": float(d[k].mean()),
            "dominates": int((winners == k).sum()), "mean_abs_s": float(ss[task].abs().mean()),
        })
    return rows


def summarize_drmgf(method_state: dict[str, object]) -> list[dict[str, object]]:
    """``layer_summary`` rows for every shared conv of a saved DR-MGF run, in model order."""
    from drmgf.methods.drmgf import variables_from_state

    variables = variables_from_state(method_state)
    rows: list[dict[str, object]] = []
    for name, vs in variables["importance"].items():
        rows += layer_summary(name, vs, variables["scale"][name])
    return rows


def summarize_metagf(method_state: dict[str, object], mode: str) -> list[dict[str, object]]:
    """Per shared tensor and task: the task's mean share of the Meta-GF fusion weight."""
    from drmgf.methods.period import unescape

    etas: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in method_state["module"].items():  # type: ignore[union-attr]
        _, task, escaped = key.split(".", 2)
        etas.setdefault(unescape(escaped), {})[task] = value
    rows: list[dict[str, object]] = []
    for name, per_task in etas.items():
        tasks = list(per_task)
        stacked = torch.stack([per_task[t] for t in tasks])
        w = torch.sigmoid(stacked) if mode == "layer" else torch.exp(len(tasks) * stacked)
        share = w / w.sum(0, keepdim=True)
        winners = share.argmax(0)
        for k, task in enumerate(tasks):
            rows.append({"layer": name, "task": task, "channels": int(w.shape[1]),
                         "mean_share": float(share[k].mean()), "dominates": int((winners == k).sum())})
    return rows
