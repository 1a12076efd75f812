"""Physical filter removal for one task's network with torch-pruning (PITFALLS.md: torch-pruning 1.6.1)."""

from __future__ import annotations

import torch
from torch import nn

from drmgf.export.groups import ChannelGroup, channel_groups
from drmgf.export.tasknet import TaskNet, copy_with_names


def union_routes(groups: list[ChannelGroup], selected: dict[str, list[int]],
                 scores: dict[str, torch.Tensor] | None = None, align: int = 1) -> dict[str, list[int]]:
    """Final kept filters per route layer: every group keeps the union of its members' choices.

    Args:
        groups: the task network's channel groups.
        selected: route layer -> filters the rule kept (other convs keep everything).
        scores: route layer -> [O] filter scores, used to pick the filters added by ``align``.
        align: round every group's kept count up to a multiple of this (capped at the group size):
            onnxruntime runs a conv keeping 20 of 32 channels as slowly as one keeping 32.
    Returns:
        route layer -> sorted kept filters, consistent across each group.
    """
    final = {}
    for group in groups:
        positions = group.kept_positions(selected)
        if align > 1 and len(positions) % align:
            positions = _aligned(group, positions, scores or {}, align)
        for name, channels in group.members.items():
            if name in selected:
                final[name] = sorted(channels[p] for p in positions)
    return final


def _aligned(group: ChannelGroup, positions: list[int], scores: dict[str, torch.Tensor], align: int) -> list[int]:
    """Add the best-scoring remaining positions (sum of members' max-normalised scores) up to a multiple of align."""
    target = min(group.size, -(-len(positions) // align) * align)
    merit = torch.zeros(group.size, dtype=torch.float64)
    for name, channels in group.members.items():
        if name in scores:
            s = scores[name].double()
            merit += s[channels] / s.max().clamp_min(1e-30)
    rest = sorted(set(range(group.size)) - set(positions), key=lambda p: (-float(merit[p]), p))
    return sorted(positions + rest[: target - len(positions)])


def prune_task(net: TaskNet, kept: dict[str, list[int]], example: torch.Tensor) -> nn.Module:
    """A pruned copy of ``net.module`` keeping exactly ``kept`` filters of each route layer.

    Args:
        net: the task network (not modified).
        kept: route layer -> sorted kept filters, already consistent within groups (``union_routes``).
        example: input batch [B, C, H, W] for tracing.
    Returns:
        The pruned module in eval mode.
    """
    import torch_pruning as tp

    module, names = copy_with_names(net)
    by_name = {v: m for m in module.modules() for k, v in names.items() if k == id(m)}
    groups = channel_groups(module, example, names, net.couplings)
    for group in groups:
        removed = sorted(set(range(group.size)) - set(group.kept_positions(kept)))
        if not removed:
            continue
        for root in group.roots:
            idxs = sorted({group.members[root][p] for p in removed})
            with torch.enable_grad():  # rebuilt per prune: indices stay valid after earlier prunes
                dg = tp.DependencyGraph().build_dependency(module, example_inputs=example)
            tp_group = dg.get_pruning_group(by_name[root], tp.prune_conv_out_channels, idxs=idxs)
            if not dg.check_pruning_group(tp_group):
                raise RuntimeError(f"pruning {root} would empty a layer (kept {group.size - len(removed)} of {group.size})")
            tp_group.prune()
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
