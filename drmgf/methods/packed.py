"""Many shared parameters packed into flat tensors, so per-step route and fusion arithmetic is a
handful of large operations instead of a dozen small ones per layer.

A packed parameter of shape [O, I, k, k] has O*I *connections* (rows of the importance) of k*k
elements each; a 1-D parameter [C] has C connections of one element. Connections of one output
filter form a *segment* (the sums over inputs i of ALGORITHM.md). Tasks that do not reach a
parameter contribute zeros, which every formula here ignores exactly.
"""

from __future__ import annotations

import torch


class Packing:
    """Index maps of a fixed list of parameters.

    Args:
        shapes: parameter name -> full shape, in packing order.
        device: where the index tensors live.
    """

    def __init__(self, shapes: dict[str, torch.Size], device: torch.device) -> None:
        self.names = list(shapes)
        self.shapes = dict(shapes)
        self.connections = {n: int(s[0] * s[1]) if len(s) >= 2 else int(s[0]) for n, s in shapes.items()}
        self.numel = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
        segments, repeats, first = [], [], 0
        for n, s in shapes.items():
            per_segment = int(s[1]) if len(s) >= 2 else 1
            segments.append(torch.arange(self.connections[n]) // per_segment + first)
            first += self.connections[n] // per_segment
            repeats.append(torch.full((self.connections[n],), self.numel[n] // self.connections[n]))
        self.segment = torch.cat(segments).to(device)
        self.segments = first
        self.repeats = torch.cat(repeats).to(device)
        self.connection_of = torch.repeat_interleave(torch.arange(len(self.repeats)), self.repeats.cpu()).to(device)
        self.size = int(self.repeats.sum())

    def rows(self, per_task: list[dict[str, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
        """[T, N] from per-task {name: [O, I] or [C]} (zeros where a task has no entry)."""
        zeros = {n: like.new_zeros(self.connections[n]) for n in self.names}
        return torch.stack([torch.cat([t[n].reshape(-1) if n in t else zeros[n] for n in self.names])
                            for t in per_task])

    def flat(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """[E]: the parameters' elements, concatenated."""
        return torch.cat([values[n].reshape(-1) for n in self.names])

    def segment_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of each row over its segment, broadcast back: [T, N] -> [T, N]."""
        sums = x.new_zeros(x.shape[0], self.segments).index_add(1, self.segment, x)
        return sums.index_select(1, self.segment)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Per-connection values to per-element values: [..., N] -> [..., E]."""
        return torch.repeat_interleave(x, self.repeats, dim=-1, output_size=self.size)

    def connection_norm(self, flat: torch.Tensor, eps: float) -> torch.Tensor:
        """max(||slice||, eps) of every connection: [E] -> [N]."""
        squares = flat.new_zeros(len(self.repeats)).index_add(0, self.connection_of, flat * flat)
        return squares.clamp_min(eps * eps).sqrt()

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """[E] -> {name: tensor of the parameter's shape} (views)."""
        out, start = {}, 0
        for n in self.names:
            out[n] = flat[start:start + self.numel[n]].view(self.shapes[n])
            start += self.numel[n]
        return out
