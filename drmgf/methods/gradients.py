"""Step-level gradient de-conflict methods: PCGrad, CAGrad, MGDA, IMTL-G, Nash-MTL.

Each step computes one gradient per task of the lambda-weighted loss lambda_t L_t (one
``autograd.grad`` per task on a retained graph), stacks the shared parameters' parts into
G [T, P], and writes the aggregator's direction into the shared parameters' ``.grad``. Private
parameters (reached by one task only, e.g. a head) get their own task's gradient. Which
parameters are shared is probed once in ``setup`` on one training batch (``probe_sharing``).

Tasks with lambda_t = 0 take no part in the aggregation (their gradient is zero by definition of
lambda; a zero row would otherwise pin MGDA to the zero vector). Nash-MTL's direction does not
depend on the scale of each task's gradient, so lambda does not change it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from drmgf.methods import aggregators
from drmgf.methods.base import StepMethod
from drmgf.methods.sharing import Sharing, probe_sharing
from drmgf.train.context import TrainContext
from drmgf.utils import generator

# Stream key of PCGrad's task orders, so they do not coincide with the minibatch order streams.
PCGRAD_STREAM = 0x9C6AAD


def flatten(grads: list[torch.Tensor | None], params: list[nn.Parameter]) -> torch.Tensor:
    """Concatenate gradients (None -> zeros). Returns [P] with P = sum of the parameters' sizes."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def write_grads(direction: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Split a flat direction [P] into the parameters' ``.grad`` (replacing what was there)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = direction[offset: offset + n].view_as(p).detach().clone()
        offset += n


class GradientMethod(StepMethod):
    """Base of the aggregators: per-task gradients of the shared parameters -> one direction.

    Subclasses implement ``weights``: the Gram matrix M = G G^T [T, T] -> w [T] with the
    direction d = w^T G. The shared/private split is probed in ``setup``.
    """

    name = "gradient"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.sharing: Sharing | None = None

    def setup(self, ctx: TrainContext) -> None:
        x, _ = next(iter(ctx.batches(0, limit=1)))
        self.sharing = probe_sharing(ctx.model, ctx.task_names, x)

    def weights(self, ctx: TrainContext, M: torch.Tensor) -> torch.Tensor:
        """Direction weights w [T] (float64) for the Gram matrix M [T, T] of the active tasks."""
        raise NotImplementedError

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.sharing is None:
            raise RuntimeError(f"{self.name}: setup() must run before training")
        params = dict(ctx.model.named_parameters())
        shared = [params[n] for n in self.sharing.shared()]
        active = [n for n in ctx.task_names if ctx.weights[n] > 0]
        self.steps += 1
        G = self.task_gradients(ctx, losses, active, shared)
        if G is None:
            for p in shared:
                p.grad = torch.zeros_like(p)
            return {}
        w = self.weights(ctx, aggregators.gram(G).cpu())  # T x T solvers run on the CPU
        write_grads(aggregators.combine(w, G), shared)
        return {f"w_{task}": float(v) for task, v in zip(active, w)}

    def task_gradients(self, ctx: TrainContext, losses: dict[str, torch.Tensor], active: list[str],
                       shared: list[nn.Parameter]) -> torch.Tensor | None:
        """G [T_active, P] of the shared parameters; fills the private parameters' ``.grad``.

        One ``autograd.grad`` per active task on the retained graph (released by the last one).
        Returns None when no task is active or nothing is shared.
        """
        params = dict(ctx.model.named_parameters())
        rows = []
        for i, task in enumerate(active):
            private = [params[n] for n in self.sharing.private(task)]  # type: ignore[union-attr]
            grads = torch.autograd.grad(ctx.weights[task] * losses[task], shared + private,
                                        retain_graph=i < len(active) - 1, allow_unused=True)
            rows.append(flatten(list(grads[: len(shared)]), shared))
            for p, g in zip(private, grads[len(shared):]):
                p.grad = g if g is not None else torch.zeros_like(p)
        for task in ctx.task_names:
            if task not in active:  # as in joint training with lambda_t = 0: zero, not absent
                for name in self.sharing.private(task):  # type: ignore[union-attr]
                    params[name].grad = torch.zeros_like(params[name])
        return torch.stack(rows) if rows and shared else None


class PCGrad(GradientMethod):
    """PCGrad (Yu et al. 2020): project each gradient off the others it conflicts with, then sum.

    The random task order comes from a generator seeded by (run seed, step), so a resumed run
    repeats the same orders.
    """

    name = "pcgrad"

    def weights(self, ctx: TrainContext, M: torch.Tensor) -> torch.Tensor:
        gen = generator(ctx.cfg.run.seed, PCGRAD_STREAM, int(self.steps))
        return aggregators.pcgrad_weights(M, gen)


class CAGrad(GradientMethod):
    """CAGrad (Liu et al. 2021): the best worst-task improvement within c ||g0|| of the mean gradient."""

    name = "cagrad"

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def weights(self, ctx: TrainContext, M: torch.Tensor) -> torch.Tensor:
        return aggregators.cagrad_weights(M, self.c)


class _Fixed(GradientMethod):
    """An aggregator whose weights depend on M only."""

    solver: Callable[[torch.Tensor], torch.Tensor]

    def weights(self, ctx: TrainContext, M: torch.Tensor) -> torch.Tensor:
        return type(self).solver(M)


class MGDA(_Fixed):
    """MGDA (Sener & Koltun 2018): the minimum-norm point of the hull of the raw task gradients."""

    name = "mgda"
    solver = staticmethod(aggregators.mgda_weights)


class IMTLG(_Fixed):
    """IMTL-G (Liu et al. 2021): weights summing to 1 with equal projections on the unit gradients."""

    name = "imtl"
    solver = staticmethod(aggregators.imtl_weights)


class NashMTL(_Fixed):
    """Nash-MTL (Navon et al. 2022): alpha with G G^T alpha = 1/alpha, direction G^T alpha."""

    name = "nash_mtl"
    solver = staticmethod(aggregators.nash_mtl_weights)
