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
from drmgf.methods.fusion import convex_fuse, importance_shares, norm_bias_weights, norm_weight_weights
from drmgf.methods.period import PeriodMethod, escape, unescape
from drmgf.methods.routing import gate_weights, routed_weight, slice_norm
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
        self._gates: dict[tuple[str, str], torch.Tensor] = {}  # per period: route weights c / sum c
        self._shares: dict[str, torch.Tensor] = {}  # per fusion: |v| / sum_i |v| (v frozen there)

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
        self._gates: dict[tuple[str, str], torch.Tensor] = {}
        self._shares: dict[str, torch.Tensor] = {}

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
        """W_eff of every shared conv under task ``task``'s route (differentiable in W and v)."""
        params = dict(ctx.model.named_parameters())
        out = {}
        for name, pl in self.plan.items():
            if pl.role == "connection":
                current = pl.tasks.index(task) if task in pl.tasks else None
                c = self._gates.get((name, task))
                if c is None:  # the same at every step: cached per period
                    c = self._gates[(name, task)] = gate_weights(len(pl.tasks), current, self.cfg.dominance,
                                                                 params[name])
                out[name] = routed_weight(params[name], self._importances(name), current, self.cfg.dominance, c)
        return out

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
        """pi [K, O, I] or [K, C] of the tasks reaching shared parameter ``name``."""
        pl = self.plan[name]
        ss = torch.stack([self.scale[t][escape(name)] for t in pl.tasks])
        if pl.role == "connection":  # v is frozen during fusion: its shares are computed once
            if name not in self._shares:
                self._shares[name] = importance_shares(self._importances(name).detach())
            return self._shares[name] * ss.abs()
        if pl.role == "norm_weight":
            return norm_weight_weights(torch.ones_like(ss), ss)
        return norm_bias_weights(ss)

    def fused(self, w0: dict[str, torch.Tensor], stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: convex_fuse(w0[n], stacked[n], self.fusion_weights(n)) for n in stacked}


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
