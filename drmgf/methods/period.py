"""Disentangle-then-fuse periods shared by DR-MGF and Meta-GF (ALGORITHM.md sections 3 and 5).

A period trains every task separately from the same start W0, each pass with the loss
lambda_t L_t + alpha * sum_{k != t} lambda_k L_k, stores Delta_t = model_t - W0 and resets the
parameters; then it fuses the task models with meta-learned weights over one fusion pass that
minimises the unweighted sum of the task losses, and commits the fused weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from drmgf.config import MethodConfig
from drmgf.data.base import normalize
from drmgf.methods.base import LossMeter, Method
from drmgf.methods.fusion import bn_mixture, mean_fuse
from drmgf.methods.sharing import Sharing, probe_sharing
from drmgf.train.context import TrainContext

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class ParamPlan:
    """How one parameter is fused.

    Attributes:
        name: parameter name in the model.
        role: ``connection`` (shared weight of dim >= 2), ``norm_weight`` / ``norm_bias`` (shared
            normalisation affine), ``mean`` (other shared: conv biases), ``private`` or ``unused``.
        tasks: the tasks reaching it, in model order.
    """

    name: str
    role: str
    tasks: tuple[str, ...]


def plan_parameters(model: nn.Module, sharing: Sharing) -> dict[str, ParamPlan]:
    """Give every parameter of ``model`` its fusion role."""
    norm_roles = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{mod_name}." if mod_name else ""
            norm_roles[prefix + "weight"], norm_roles[prefix + "bias"] = "norm_weight", "norm_bias"
    plan = {}
    for name, p in model.named_parameters():
        tasks = sharing.reach.get(name, ())
        if len(tasks) == 0:
            role = "unused"
        elif len(tasks) == 1:
            role = "private"
        elif name in norm_roles:
            role = norm_roles[name]
        else:
            role = "connection" if p.dim() >= 2 else "mean"
        plan[name] = ParamPlan(name, role, tasks)
    return plan


def bn_tasks(model: nn.Module, plan: dict[str, ParamPlan], all_tasks: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Running-statistics buffer name -> tasks whose models mix into it (those reaching its BN)."""
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            prefix = f"{mod_name}." if mod_name else ""
            tasks = plan[prefix + "weight"].tasks if module.affine else all_tasks
            out[prefix + "running_mean"] = out[prefix + "running_var"] = tasks
    return out


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn off gradients of the model's own parameters (the fusion pass learns meta variables only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class PeriodMethod(Method):
    """Base of the period methods. Subclasses define the routes, the task models and the fusion.

    Args:
        cfg: method configuration (alpha, period_steps, reset_between_tasks, s_lr, ema).
        alpha_default: auxiliary loss weight when ``cfg.alpha`` is unset.
    """

    def __init__(self, cfg: MethodConfig, alpha_default: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.alpha = cfg.alpha if cfg.alpha is not None else alpha_default
        self.sharing: Sharing | None = None
        self.plan: dict[str, ParamPlan] = {}

    # --- set-up -----------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        example = normalize(ctx.data.train.images[:2], ctx.data.mean, ctx.data.std).to(ctx.device)
        self.sharing = probe_sharing(ctx.model, ctx.task_names, example)
        self.plan = plan_parameters(ctx.model, self.sharing)
        self.bn_tasks = bn_tasks(ctx.model, self.plan, tuple(ctx.task_names))
        self.create_variables(ctx)

    def create_variables(self, ctx: TrainContext) -> None:
        raise NotImplementedError

    def fused_roles(self) -> set[str]:
        """Roles whose fusion depends on meta variables."""
        raise NotImplementedError

    # --- hooks for subclasses ---------------------------------------------------------------
    def begin_period(self, ctx: TrainContext, epoch: int) -> None:
        """Called before the first task pass."""

    def task_forward(self, ctx: TrainContext, task: str, x: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """The forward of task ``task``'s pass (DR-MGF substitutes routed weights here)."""
        del task, epoch
        return ctx.model(x)

    def after_task_step(self, epoch: int) -> None:
        """Called after each network optimizer step of a task pass."""

    def zero_task_grads(self) -> None:
        """Clear gradients of variables trained during the task passes."""

    def task_model(self, ctx: TrainContext, task: str, epoch: int) -> dict[str, torch.Tensor]:
        """Parameters of task ``task``'s model at the end of its pass."""
        del task, epoch
        return {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def snapshot_task_state(self) -> object:
        """Method state restored before each task pass under --reset-between-tasks."""
        return None

    def restore_task_state(self, state: object) -> None:
        del state

    def fused(self, w0: dict[str, torch.Tensor], stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fused values of the parameters with a meta-learned fusion (differentiable in the meta variables).

        Args:
            w0: name -> W0 of every meta-fused parameter.
            stacked: name -> [K, ...] Delta of the K tasks reaching it (plan order).
        """
        raise NotImplementedError

    def fusion_state(self, w0: dict[str, torch.Tensor], deltas: dict[str, dict[str, torch.Tensor]]) -> object:
        """What the fusion pass needs at every step, built once per period (default: ``fused``'s inputs)."""
        return w0, {n: torch.stack([deltas[t][n] for t in self.plan[n].tasks]) for n in w0}

    def fused_from(self, state: object) -> dict[str, torch.Tensor]:
        """The fused parameters from ``fusion_state``'s result."""
        return self.fused(*state)  # type: ignore[misc]

    def meta_optimizer(self) -> torch.optim.Optimizer | None:
        raise NotImplementedError

    def end_period(self, ctx: TrainContext, epoch: int) -> None:
        """Called after the fused weights are committed."""

    # --- the period -------------------------------------------------------------------------
    def train_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        model = ctx.model
        model.train()
        self.begin_period(ctx, epoch)
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        start = self._snapshot(ctx) if self.cfg.reset_between_tasks else None
        deltas: dict[str, dict[str, torch.Tensor]] = {}
        owned: dict[str, torch.Tensor] = {}
        buffers: dict[str, dict[str, torch.Tensor]] = {}
        logs: dict[str, float] = {}
        for i, task in enumerate(ctx.task_names):
            if start is not None and i > 0:
                self._restore(ctx, start)
            logs[task] = self._task_pass(ctx, epoch, i, task)
            model_t = self.task_model(ctx, task, epoch)
            for n, pl in self.plan.items():
                if pl.role == "private" and pl.tasks[0] == task:
                    owned[n] = model_t[n]  # exact: W0 + (W_t - W0) would round
                elif task in pl.tasks:
                    deltas.setdefault(task, {})[n] = model_t[n] - w0[n]
            buffers[task] = {n: b.detach().clone() for n, b in model.named_buffers()}
            self._load_params(model, w0)
        logs.update(self._fuse(ctx, epoch, w0, deltas, owned, buffers))
        self.end_period(ctx, epoch)
        return logs

    def _snapshot(self, ctx: TrainContext) -> tuple[object, ...]:
        return (copy.deepcopy(ctx.optimizer.state_dict()),
                {n: b.detach().clone() for n, b in ctx.model.named_buffers()}, self.snapshot_task_state())

    def _restore(self, ctx: TrainContext, start: tuple[object, ...]) -> None:
        opt_state, bufs, method_state = start
        ctx.optimizer.load_state_dict(copy.deepcopy(opt_state))  # type: ignore[arg-type]
        self._load_buffers(ctx.model, bufs)  # type: ignore[arg-type]
        self.restore_task_state(method_state)

    @staticmethod
    def _load_params(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
        _copy_into(model.named_parameters(), values)

    @staticmethod
    def _load_buffers(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
        _copy_into(model.named_buffers(), values)

    def _task_pass(self, ctx: TrainContext, epoch: int, index: int, task: str) -> float:
        """Train ``task`` for one period; returns its mean unweighted loss."""
        meter, steps = LossMeter(), ctx.steps_per_pass(self.cfg.period_steps)
        label = f"task {task} ({index + 1}/{len(ctx.task_names)})"
        for step, (x, targets) in enumerate(ctx.batches(epoch, index, self.cfg.period_steps)):
            losses = ctx.losses(self.task_forward(ctx, task, x, epoch), targets)
            loss = ctx.weights[task] * losses[task] + self.alpha * sum(
                ctx.weights[k] * v for k, v in losses.items() if k != task)
            ctx.optimizer.zero_grad(set_to_none=True)
            self.zero_task_grads()
            loss.backward()
            ctx.optimizer.step()
            self.after_task_step(epoch)
            meter.add({task: losses[task]}, n=x.shape[0])
            ctx.progress(label, step + 1, steps, float(loss.detach()))
        return meter.means()[task]

    @torch.no_grad()
    def _fixed_fusion(self, ctx: TrainContext, w0: dict[str, torch.Tensor], deltas: dict[str, dict[str, torch.Tensor]],
                      owned: dict[str, torch.Tensor], buffers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Set everything whose fusion needs no meta variable: private, mean, unused, BN statistics."""
        values = {}
        for name, pl in self.plan.items():
            if pl.role == "private":
                values[name] = owned[name]  # = W0 + Delta_owner
            elif pl.role == "unused" or pl.role in self.fused_roles():
                values[name] = w0[name]  # fused ones are set by the fusion pass
            else:
                values[name] = mean_fuse(w0[name], torch.stack([deltas[t][name] for t in pl.tasks]))
        self._load_params(ctx.model, values)
        self._load_buffers(ctx.model, self._mixed_buffers(ctx, buffers))

    def _mixed_buffers(self, ctx: TrainContext, buffers: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """BN running statistics as the mixture of the task models; other buffers from the last pass."""
        last = buffers[ctx.task_names[-1]]
        out = dict(last)
        for name, tasks in self.bn_tasks.items():
            if not name.endswith("running_mean"):
                continue
            var_name = name[: -len("running_mean")] + "running_var"
            if len(tasks) == 1:  # private BN: its owner's statistics, exactly
                out[name], out[var_name] = buffers[tasks[0]][name], buffers[tasks[0]][var_name]
                continue
            mu, var = bn_mixture(torch.stack([buffers[t][name] for t in tasks]),
                                 torch.stack([buffers[t][var_name] for t in tasks]))
            out[name], out[var_name] = mu, var
        return out

    def _fuse(self, ctx: TrainContext, epoch: int, w0: dict[str, torch.Tensor], deltas: dict[str, dict[str, torch.Tensor]],
              owned: dict[str, torch.Tensor], buffers: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        """Fixed fusions, then the meta-learned fusion pass, then commit the fused weights."""
        self._fixed_fusion(ctx, w0, deltas, owned, buffers)
        names = [n for n, pl in self.plan.items() if pl.role in self.fused_roles()]
        if not names:  # a single task, or nothing shared: nothing to learn
            return {}
        state = self.fusion_state({n: w0[n] for n in names}, deltas)
        meter, steps, opt = LossMeter(), ctx.steps_per_pass(self.cfg.period_steps), self.meta_optimizer()
        with frozen(ctx.model):
            for step, (x, targets) in enumerate(ctx.batches(epoch, len(ctx.task_names), self.cfg.period_steps)):
                outputs = functional_call(ctx.model, self.fused_from(state), (x,))
                loss = sum(ctx.losses(outputs, targets).values())
                opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                loss.backward()  # type: ignore[union-attr]
                opt.step()  # type: ignore[union-attr]
                meter.add({"fusion": loss}, n=x.shape[0])  # type: ignore[dict-item]
                ctx.progress("fusion", step + 1, steps, float(loss.detach()))  # type: ignore[union-attr]
        with torch.no_grad():
            self._load_params(ctx.model, self.fused_from(state))
        return meter.means()


@torch.no_grad()
def _copy_into(named: Iterator[tuple[str, torch.Tensor]], values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the named tensors that have an entry (in place, no autograd)."""
    for n, t in named:
        if n in values:
            t.copy_(values[n])


def escape(name: str) -> str:
    """Parameter name -> a key allowed in ParameterDict (no dots)."""
    return name.replace(".", "#")


def unescape(key: str) -> str:
    return key.replace("#", ".")
