"""Channel coupling groups of a task network (ALGORITHM.md section 4, PITFALLS.md torch-pruning).

Output channels tied by a residual add, a concat or an element-wise product must be kept or
removed together. torch-pruning's dependency graph finds those ties; pool indices (SegNet's
max-unpooling) are invisible to it, so models name those pairs themselves (``extra`` couplings).

A group has positions 0..n-1; ``members[conv]`` maps each position to that conv's channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ChannelGroup:
    """Output channels of several convs that must be pruned together.

    Attributes:
        size: number of coupled channel positions.
        members: conv name -> [size] channel index of that conv at each position.
        roots: one conv per torch-pruning group (a merged group needs one prune per root).
        locked: True when a non-conv layer's outputs (a classifier) belong to the group.
    """

    size: int
    members: dict[str, list[int]] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)
    locked: bool = False

    def kept_positions(self, kept: dict[str, list[int]]) -> list[int]:
        """Positions kept by the union of the members' kept channels; members without a route keep all."""
        if self.locked or any(name not in kept for name in self.members):
            return list(range(self.size))
        positions: set[int] = set()
        for name, channels in self.members.items():
            chosen = set(kept[name])
            positions |= {p for p, c in enumerate(channels) if c in chosen}
        return sorted(positions)


def _tp_group(dg: object, conv: nn.Conv2d, names: dict[int, str]) -> tuple[dict[str, list[int]], bool]:
    import torch_pruning as tp

    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))  # type: ignore[attr-defined]
    members, locked = {}, False
    for item in group.items:
        module, handler = item.dep.target.module, item.dep.handler
        if getattr(handler, "__name__", "") != "prune_out_channels":
            continue
        if isinstance(module, nn.Conv2d) and id(module) in names:
            members[names[id(module)]] = [int(i) for i in item.idxs]
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.ConvTranspose2d)):
            locked = True  # a head's outputs: never pruned
    return members, locked


def channel_groups(module: nn.Module, example: torch.Tensor, names: dict[int, str],
                   extra: list[tuple[str, str]] = ()) -> list[ChannelGroup]:  # type: ignore[assignment]
    """All output-channel groups of the convs of ``module``.

    Args:
        module: the network one task deploys (traced by torch-pruning; needs grads enabled).
        example: input batch [B, C, H, W].
        names: id(conv) -> its name in the full model (convs absent here are ignored).
        extra: pairs of conv names whose output channels are coupled 1:1 outside autograd.
    """
    import torch_pruning as tp

    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    groups: list[ChannelGroup] = []
    seen: dict[str, ChannelGroup] = {}
    for conv in module.modules():
        if not isinstance(conv, nn.Conv2d) or id(conv) not in names or names[id(conv)] in seen:
            continue
        members, locked = _tp_group(dg, conv, names)
        g = ChannelGroup(size=conv.out_channels, members=members, roots=[names[id(conv)]], locked=locked)
        groups.append(g)
        seen.update({n: g for n in members})
    for a, b in extra:
        if a in seen and b in seen and seen[a] is not seen[b]:
            _merge(seen[a], seen[b], a, b, groups, seen)
    return groups


def _merge(ga: ChannelGroup, gb: ChannelGroup, a: str, b: str, groups: list[ChannelGroup],
           seen: dict[str, ChannelGroup]) -> None:
    """Merge gb into ga where channel c of conv ``a`` is tied to channel c of conv ``b``."""
    if ga.size != gb.size:
        raise ValueError(f"coupled convs {a} and {b} have {ga.size} and {gb.size} channels")
    pos_of_b = {c: p for p, c in enumerate(gb.members[b])}
    order = [pos_of_b[c] for c in ga.members[a]]  # position in gb of ga's position p
    for name, channels in gb.members.items():
        ga.members[name] = [channels[q] for q in order]
        seen[name] = ga
    ga.roots += gb.roots
    ga.locked = ga.locked or gb.locked
    groups.remove(gb)
