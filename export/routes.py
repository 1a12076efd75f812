"""Explicit per-task routes from learned importance (ALGORITHM.md section 4).

A route is, per shared conv a task reaches, the filters the task keeps. Scores: ``importance``
(r_t[o] = sum_i |v_t[o, i]| of a DR-MGF run) or ``magnitude`` (the filter's L2 norm, any run).
Rules: ``threshold`` (r / max r >= tau), ``keep-ratio`` (top ceil(rho * O)), ``dominance`` (keep
unless another task's share beats this task's by ``margin``). No layer is ever emptied, and
coupled filters (residual adds, concats, pool indices) keep the union of their layers' choices.
``align`` then rounds each group's kept count up to a multiple of the runtime's channel block.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from drmgf.errors import ConfigError
from drmgf.importance import dominance_shares, filter_scores
from drmgf.methods.routing import slice_norm
from drmgf.export.groups import channel_groups
from drmgf.export.prune import prune_task, union_routes
from drmgf.export.tasknet import TaskNet, copy_with_names, count_macs_params

SCHEMA = "drmgf.routes/1"
RULES = ("threshold", "keep-ratio", "dominance")
SCORES = ("importance", "magnitude")


@dataclass(frozen=True)
class RouteRule:
    """How filters are chosen (flags of ``drmgf routes``)."""

    rule: str = "threshold"
    tau: float = 0.1
    keep_ratio: float = 0.5
    margin: float = 1.1
    score: str = "importance"
    align: int = 1

    def validate(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"--rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.score not in SCORES:
            raise ConfigError(f"--score must be importance or magnitude, got {self.score!r}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"--tau must be in (0, 1], got {self.tau}")
        if not 0 < self.keep_ratio <= 1:
            raise ConfigError(f"--keep-ratio must be in (0, 1], got {self.keep_ratio}")
        if self.margin < 1:
            raise ConfigError(f"--margin must be >= 1, got {self.margin}")
        if self.align < 1:
            raise ConfigError(f"--align must be auto or a channel count >= 1, got {self.align}")
        if self.rule == "dominance" and self.score != "importance":
            raise ConfigError("--rule dominance compares tasks' learned importance: use it with --score importance")


def keep_threshold(scores: torch.Tensor, tau: float) -> list[int]:
    """Filters with r / max r >= tau. scores: [O]."""
    top = float(scores.max())
    if top <= 0:
        return list(range(scores.numel()))
    return [int(i) for i in torch.nonzero(scores / top >= tau).flatten()]


def keep_top(scores: torch.Tensor, ratio: float) -> list[int]:
    """The ceil(ratio * O) highest scores (ties: lower index first). scores: [O]."""
    count = max(1, math.ceil(ratio * scores.numel() - 1e-9))
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def keep_dominant(shares: torch.Tensor, index: int, margin: float) -> list[int]:
    """Filters no other task's share beats this task's by more than ``margin``. shares: [K, O]."""
    mine = shares[index]
    others = torch.cat([shares[:index], shares[index + 1:]])
    if others.numel() == 0:
        return list(range(mine.numel()))
    return [int(i) for i in torch.nonzero(others.max(dim=0).values <= margin * mine).flatten()]


def select(rule: RouteRule, scores: torch.Tensor, shares: torch.Tensor | None, index: int) -> list[int]:
    """Apply ``rule`` to one layer of one task, never returning an empty set."""
    if rule.rule == "threshold":
        kept = keep_threshold(scores, rule.tau)
    elif rule.rule == "keep-ratio":
        kept = keep_top(scores, rule.keep_ratio)
    else:
        kept = keep_dominant(shares, index, rule.margin)  # type: ignore[arg-type]
    return kept or [int(scores.argmax())]


def layer_scores(model: torch.nn.Module, nets: dict[str, TaskNet], rule: RouteRule,
                 importance: dict[str, dict[str, torch.Tensor]] | None,
                 scale: dict[str, dict[str, torch.Tensor]] | None) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor | None, int]]]:
    """task -> layer -> (scores [O], dominance shares [K, O] or None, this task's row in shares)."""
    params = dict(model.named_parameters())
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor | None, int]]] = {}
    for task, net in nets.items():
        out[task] = {}
        for layer in net.route_layers:
            weight = f"{layer}.weight"
            if rule.score == "magnitude":
                out[task][layer] = (slice_norm(params[weight].detach()).norm(dim=1), None, 0)
                continue
            vs = importance[weight]  # type: ignore[index]
            tasks = list(vs)
            shares = dominance_shares(torch.stack([vs[t] for t in tasks]), torch.stack([scale[weight][t] for t in tasks]))  # type: ignore[index]
            out[task][layer] = (filter_scores(vs[task]), shares, tasks.index(task))
    return out


def compute_routes(model: torch.nn.Module, nets: dict[str, TaskNet], rule: RouteRule, example: torch.Tensor,
                   importance: dict[str, dict[str, torch.Tensor]] | None = None,
                   scale: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, dict[str, Any]]:
    """Routes of every task, with score statistics and the MACs/parameters they keep.

    Args:
        model: the trained full model.
        nets: each task's network (``export.tasknet.task_nets``).
        rule: the selection rule.
        example: one input [1, C, H, W] for tracing and counting.
        importance, scale: DR-MGF variables {weight name: {task: tensor}} for ``--score importance``.
    """
    rule.validate()
    scored = layer_scores(model, nets, rule, importance, scale)
    routes = {}
    for task, net in nets.items():
        chosen = {layer: select(rule, s, sh, k) for layer, (s, sh, k) in scored[task].items()}
        module, names = copy_with_names(net)
        layer_scores_t = {layer: s for layer, (s, _, _) in scored[task].items()}
        final = union_routes(channel_groups(module, example, names, net.couplings), chosen, layer_scores_t, rule.align)
        pruned = prune_task(net, final, example)
        macs, params = count_macs_params(module, example)
        macs_kept, params_kept = count_macs_params(pruned, example)
        layers = {}
        for layer, (s, _, _) in scored[task].items():
            layers[layer] = {"filters": int(s.numel()), "kept": final[layer], "selected": len(chosen[layer]),
                             "score": {"min": float(s.min()), "mean": float(s.mean()), "max": float(s.max())}}
        routes[task] = {"layers": layers, "macs_dense": macs, "macs_kept": macs_kept,
                        "params_dense": params, "params_kept": params_kept}
    return routes


def overlap(routes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Jaccard overlap of every pair of tasks' kept filters over the layers both routes cover."""
    tasks, out = list(routes), {}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            common = set(routes[a]["layers"]) & set(routes[b]["layers"])
            inter = sum(len(set(routes[a]["layers"][l]["kept"]) & set(routes[b]["layers"][l]["kept"])) for l in common)
            union = sum(len(set(routes[a]["layers"][l]["kept"]) | set(routes[b]["layers"][l]["kept"])) for l in common)
            out[f"{a}|{b}"] = inter / union if union else math.nan
    return out


def routes_document(routes: dict[str, dict[str, Any]], rule: RouteRule, run_info: dict[str, Any]) -> dict[str, Any]:
    """The versioned ``routes.json`` content."""
    return {"schema": SCHEMA, **run_info, "rule": asdict(rule), "tasks": routes, "overlap": overlap(routes)}


def read_routes(document: dict[str, Any], nets: dict[str, TaskNet]) -> dict[str, dict[str, list[int]]]:
    """Validated kept filters per task and layer from a ``routes.json`` document."""
    if document.get("schema") != SCHEMA:
        raise ConfigError(f"routes file has schema {document.get('schema')!r}, expected {SCHEMA!r}; "
                          "recreate it with `drmgf routes`")
    out = {}
    for task, net in nets.items():
        if task not in document["tasks"]:
            raise ConfigError(f"routes file has no route for task {task!r}; recreate it with `drmgf routes`")
        layers = document["tasks"][task]["layers"]
        sizes = {net.names[id(m)]: int(m.out_channels) for m in net.module.modules() if id(m) in net.names}
        out[task] = {}
        for layer in net.route_layers:
            out[task][layer] = _checked(layers, layer, task, sizes[layer])
    return out


def _checked(layers: dict[str, Any], layer: str, task: str, size: int) -> list[int]:
    entry = layers.get(layer)
    if entry is None:
        raise ConfigError(f"routes file lacks layer {layer!r} of task {task!r}; recreate it with `drmgf routes`")
    if entry.get("filters") != size or not isinstance(entry.get("kept"), list) \
            or not all(isinstance(k, int) and not isinstance(k, bool) for k in entry["kept"]):
        raise ConfigError(f"routes file: layer {layer!r} of task {task!r} must list the kept filters (integers) of "
                          f"a conv with {size} filters, got filters={entry.get('filters')!r}; was it made for "
                          "another run? recreate it with `drmgf routes`")
    kept = entry["kept"]
    if not kept or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= size:
        raise ConfigError(f"routes file: layer {layer!r} of task {task!r} must keep sorted unique filters in "
                          f"[0, {size}), got {kept[:8]}{'...' if len(kept) > 8 else ''}; "
                          "recreate it with `drmgf routes`")
    return [int(k) for k in kept]
