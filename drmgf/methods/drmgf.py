"""DR-MGF: dynamic routes and meta-weighted gradient fusion (ALGORITHM.md sections 2-3).

Variables, per task t and shared parameter:
- importance v_t [O, I] for shared conv weights, initialised to the slice norms ||W[o, i]||,
  trained during the task passes of phase 1 (Adam, no weight decay);
- fusion scale s_t ([O, I] for conv weights, [C] for BN gamma/beta), initialised to s_init and
  meta-learned in every fusion pass. Shared conv biases are fused by the mean and have none.
Phase 1 (the first ``phase_switch`` of the epochs) routes each task pass through task-preferred
weights; phase 2 uses raw weights, freezes v and smooths the meta variables with an EMA after
every period. Every learning rate halves at the switch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from drmgf.config import MethodConfig
from drmgf.methods.fusion import FUSION_EPS, convex_fuse, importance_shares, norm_bias_weights, norm_weight_weights
from drmgf.methods.packed import Packing
from drmgf.methods.period import PeriodMethod, escape, unescape
from drmgf.methods.routing import LRN_ALPHA, LRN_BETA, NORM_EPS, slice_norm
from drmgf.train.context import TrainContext

SCALED_ROLES = {"connection", "norm_weight", "norm_bias"}


class DRMGF(PeriodMethod):
    """The published method (``--method drmgf``).

    Attributes:
        importance: task -> {escaped param name -> v [O, I]}.
        scale: task -> {escaped param name -> s}.
    """

    name = "drmgf"

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg, alpha_default=0.5)
        self.importance = nn.ModuleDict()
        self.scale = nn.ModuleDict()
        self._v_opt: torch.optim.Optimizer | None = None
        self._s_opt: torch.optim.Optimizer | None = None
        self._routes = False
        self.tasks: list[str] = []
        self._route_pack: Packing | None = None  # shared conv weights (routes)
        self._fuse_pack: Packing | None = None  # every meta-fused parameter
        self._gate_rows: dict[str, torch.Tensor] = {}  # task -> [T, N] c_k / sum c over the reaching tasks

    def fused_roles(self) -> set[str]:
        return SCALED_ROLES

    def create_variables(self, ctx: TrainContext) -> None:
        params = dict(ctx.model.named_parameters())
        for task in ctx.task_names:
            self.importance[task], self.scale[task] = nn.ParameterDict(), nn.ParameterDict()
        for name, pl in self.plan.items():
            if pl.role not in SCALED_ROLES:
                continue
            w = params[name].detach()
            for task in pl.tasks:
                if pl.role == "connection":
                    self.importance[task][escape(name)] = nn.Parameter(slice_norm(w).clone())
                shape = slice_norm(w).shape if pl.role == "connection" else w.shape
                self.scale[task][escape(name)] = nn.Parameter(torch.full(shape, self.cfg.s_init, dtype=w.dtype))
        self.to(ctx.device)
        v_params, s_params = self._all(self.importance), self._all(self.scale)
        # A single task (or nothing shared) has no variables: nothing to optimise.
        self._v_opt = torch.optim.Adam(v_params, lr=self.cfg.v_lr, weight_decay=0.0, foreach=True) if v_params else None
        self._s_opt = torch.optim.Adam(s_params, lr=self.cfg.s_lr, foreach=True) if s_params else None
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        self._pack(ctx, params)

    def _pack(self, ctx: TrainContext, params: dict[str, torch.Tensor]) -> None:
        """Index maps for batched route and fusion arithmetic, and the route weights of every task."""
        self.tasks = list(ctx.task_names)
        convs = {n: params[n].shape for n, pl in self.plan.items() if pl.role == "connection"}
        fused = {n: params[n].shape for n, pl in self.plan.items() if pl.role in SCALED_ROLES}
        self._route_pack = Packing(convs, ctx.device) if convs else None
        self._fuse_pack = Packing(fused, ctx.device) if fused else None
        for task in self.tasks:
            if self._route_pack is not None:
                c = self._route_pack.rows([{n: torch.full(params[n].shape[:2], self._c(n, k, task))
                                            for n in convs if k in self.plan[n].tasks} for k in self.tasks],
                                          params[next(iter(convs))].detach())
                self._gate_rows[task] = c / c.sum(0, keepdim=True)

    def _c(self, name: str, task: str, current: str) -> float:
        """Route weight c_k of ``task`` on layer ``name`` while ``current`` trains (ALGORITHM.md 3.1)."""
        return self.cfg.dominance if task == current and current in self.plan[name].tasks else 1.0

    @staticmethod
    def _all(tree: nn.ModuleDict) -> list[nn.Parameter]:
        return [p for sub in tree.values() for p in sub.parameters()]  # type: ignore[union-attr]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        named = {"importance": self._v_opt, "scale": self._s_opt}
        return {k: opt for k, opt in named.items() if opt is not None}

    # --- schedule ---------------------------------------------------------------------------
    def switch_epoch(self, epochs: int) -> int:
        """First epoch of phase 2."""
        return int(round(self.cfg.phase_switch * epochs))

    def routes_on(self, epoch: int, epochs: int) -> bool:
        return epoch < self.switch_epoch(epochs)

    def lr_factor(self, epoch: int, epochs: int) -> float:
        switch = self.switch_epoch(epochs)
        return 0.5 if 0 < switch <= epoch else 1.0

    def begin_period(self, ctx: TrainContext, epoch: int) -> None:
        epochs = ctx.cfg.optim.epochs
        self._routes = self.routes_on(epoch, epochs)
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * self.lr_factor(epoch, epochs)
        self._old = {k: p.detach().clone() for k, p in self.named_parameters()}

    def end_period(self, ctx: TrainContext, epoch: int) -> None:
        if self._routes or self.cfg.ema <= 0:
            return
        with torch.no_grad():  # phase 2: theta = (1 - ema) * theta_new + ema * theta_old
            for key, p in self.named_parameters():
                p.mul_(1 - self.cfg.ema).add_(self._old[key], alpha=self.cfg.ema)

    # --- task passes ------------------------------------------------------------------------
    def _importances(self, name: str) -> torch.Tensor:
        """[K, O, I] importance of the tasks reaching ``name``, in plan order."""
        return torch.stack([self.importance[t][escape(name)] for t in self.plan[name].tasks])

    def routed_params(self, ctx: TrainContext, task: str) -> dict[str, torch.Tensor]:
        """W_eff of every shared conv under task ``task``'s route (differentiable in W and v).

        p_k = |v_k| / (1 + 1e-4 sum_i |v_k|)^0.75, G = sum_k c_k p_k / sum_k c_k, W_eff = G W / ||W[o, i]||,
        computed for all shared convs at once on packed tensors.
        """
        pack = self._route_pack
        if pack is None:
            return {}
        params = dict(ctx.model.named_parameters())
        a = pack.rows([{n: self.importance[t][escape(n)] for n in pack.names if t in self.plan[n].tasks}
                       for t in self.tasks], params[pack.names[0]]).abs()
        gate = (self._gate_rows[task] * a / (1.0 + LRN_ALPHA * pack.segment_sum(a)) ** LRN_BETA).sum(0)
        w = pack.flat(params)
        return pack.unpack(w * pack.expand(gate / pack.connection_norm(w, NORM_EPS)))

    def task_forward(self, ctx: TrainContext, task: str, x: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if not self._routes:
            return ctx.model(x)
        return functional_call(ctx.model, self.routed_params(ctx, task), (x,))

    def zero_task_grads(self) -> None:
        if self._routes and self._v_opt is not None:
            self._v_opt.zero_grad(set_to_none=True)

    def after_task_step(self, epoch: int) -> None:
        if self._routes and self._v_opt is not None:
            self._v_opt.step()

    @torch.no_grad()
    def task_model(self, ctx: TrainContext, task: str, epoch: int) -> dict[str, torch.Tensor]:
        """Task t's model with the effective shared conv weights of its route (phase 1)."""
        model = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
        if self._routes:
            model.update(self.routed_params(ctx, task))
        return model

    def snapshot_task_state(self) -> object:
        opt_state = copy.deepcopy(self._v_opt.state_dict()) if self._v_opt is not None else None
        return {k: p.detach().clone() for k, p in self.importance.named_parameters()}, opt_state

    def restore_task_state(self, state: object) -> None:
        values, opt_state = state  # type: ignore[misc]
        with torch.no_grad():
            for k, p in self.importance.named_parameters():
                p.copy_(values[k])
        if self._v_opt is not None:
            self._v_opt.load_state_dict(copy.deepcopy(opt_state))

    # --- fusion -----------------------------------------------------------------------------
    def meta_optimizer(self) -> torch.optim.Optimizer | None:
        return self._s_opt

    def fusion_weights(self, name: str) -> torch.Tensor:
        """pi [K, O, I] or [K, C] of the tasks reaching shared parameter ``name`` (one parameter at a time)."""
        pl = self.plan[name]
        ss = torch.stack([self.scale[t][escape(name)] for t in pl.tasks])
        if pl.role == "connection":
            return importance_shares(self._importances(name).detach()) * ss.abs()
        if pl.role == "norm_weight":
            return norm_weight_weights(torch.ones_like(ss), ss)
        return norm_bias_weights(ss)

    def fused(self, w0: dict[str, torch.Tensor], stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference fusion, one parameter at a time (the fusion pass uses the packed ``fused_from``)."""
        return {n: convex_fuse(w0[n], stacked[n], self.fusion_weights(n)) for n in stacked}

    def _shares(self, name: str, task: str) -> torch.Tensor:
        """The fixed factor of pi_t: |v_t| / sum_i |v_t| (conv), |1| / C (BN gamma), 1 (BN beta)."""
        pl = self.plan[name]
        s = self.scale[task][escape(name)]
        if pl.role == "connection":
            return importance_shares(self.importance[task][escape(name)].detach())
        return s.detach().new_full(s.shape, 1.0 / s.numel() if pl.role == "norm_weight" else 1.0)

    def fusion_state(self, w0: dict[str, torch.Tensor], deltas: dict[str, dict[str, torch.Tensor]]) -> object:
        """Packed W0 [E], Delta [T, E] (zeros where a task does not reach) and the fixed shares [T, N]."""
        pack = self._fuse_pack
        assert pack is not None and set(pack.names) == set(w0)  # fused roles are fixed at set-up
        zeros = {n: torch.zeros_like(w0[n]) for n in pack.names}
        d = torch.stack([pack.flat({n: deltas[t].get(n, zeros[n]) for n in pack.names}) for t in self.tasks])
        shares = pack.rows([{n: self._shares(n, t) for n in pack.names if t in self.plan[n].tasks}
                            for t in self.tasks], w0[pack.names[0]])
        return pack.flat(w0), d, shares

    def fused_from(self, state: object) -> dict[str, torch.Tensor]:
        """W_new = W0 + sum_t pi_t Delta_t / (sum_t pi_t + 1e-20), pi_t = share_t |s_t|, all parameters at once."""
        pack = self._fuse_pack
        w0, d, shares = state  # type: ignore[misc]
        s = pack.rows([{n: self.scale[t][escape(n)] for n in pack.names if t in self.plan[n].tasks}  # type: ignore[union-attr]
                       for t in self.tasks], w0)
        pi = pack.expand(shares * s.abs())  # type: ignore[union-attr]
        return pack.unpack(w0 + (pi * d).sum(0) / (pi.sum(0) + FUSION_EPS))  # type: ignore[union-attr]


def variables_from_state(method_state: dict[str, object]) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Read v and s of a saved DR-MGF run without its model.

    Returns:
        {"importance": {param_name: {task: v}}, "scale": {param_name: {task: s}}}.
    """
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {"importance": {}, "scale": {}}
    for key, value in method_state["module"].items():  # type: ignore[union-attr]
        kind, task, escaped = key.split(".", 2)
        if kind in out:
            out[kind].setdefault(unescape(escaped), {})[task] = value
    return out
