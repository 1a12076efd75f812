"""Loss-weighting baselines: uncertainty weighting (uw), dynamic weight average (dwa), GradNorm.

Each one backs up a weighted sum of the task losses once per step; they differ in where the
weights come from. The task weights lambda (``--task-weights``) scale the losses the methods see:
every method works on lambda_t L_t (DWA's loss ratios are unchanged by that scale).
"""

from __future__ import annotations

import torch
from torch import nn

from drmgf.errors import ConfigError
from drmgf.methods.base import StepMethod
from drmgf.methods.sharing import probe_sharing
from drmgf.train.context import TrainContext

# ---------------------------------------------------------------------------------------------
# Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)
# ---------------------------------------------------------------------------------------------


def uncertainty_loss(losses: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """sum_t L_t / (2 exp(s_t)) + s_t / 2, with s_t = log sigma_t^2 learned.

    Args:
        losses: [T] task losses.
        log_vars: [T] s_t.
    Returns:
        scalar.
    """
    return (0.5 * torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


class UncertaintyWeighting(StepMethod):
    """``uw``: learned homoscedastic uncertainty s_t per task, updated by Adam (``--weight-lr``)."""

    name = "uw"

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.log_vars = nn.Parameter(torch.zeros(0))
        self._optimizer: torch.optim.Optimizer | None = None

    def setup(self, ctx: TrainContext) -> None:
        self.log_vars = nn.Parameter(torch.zeros(len(ctx.tasks)))
        self._optimizer = torch.optim.Adam([self.log_vars], lr=self.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"log_vars": self._optimizer} if self._optimizer is not None else {}

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        names = ctx.task_names
        active = torch.tensor([ctx.weights[n] > 0 for n in names], device=self.log_vars.device)
        stacked = torch.stack([ctx.weights[n] * losses[n] for n in names])
        # tasks with lambda_t = 0 take no part (their s_t would otherwise drift to -inf)
        loss = uncertainty_loss(stacked[active], self.log_vars[active])
        self._optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        loss.backward()
        self._optimizer.step()  # type: ignore[union-attr]
        weights = 0.5 * torch.exp(-self.log_vars.detach())
        return {f"w_{n}": float(w) for n, w in zip(names, weights)}


# ---------------------------------------------------------------------------------------------
# Dynamic weight average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019)
# ---------------------------------------------------------------------------------------------


def dwa_weights(history: list[list[float]], temperature: float) -> torch.Tensor:
    """lambda_t(e) = T exp(w_t / Temp) / sum_i exp(w_i / Temp), w_t = L_t(e-1) / L_t(e-2).

    Args:
        history: epoch-mean training losses of the finished epochs, [E][T], oldest first.
        temperature: Temp > 0.
    Returns:
        [T] float64 weights summing to T; all ones while fewer than two epochs are finished.
    """
    if len(history) < 2:
        return torch.ones(len(history[0]) if history else 0, dtype=torch.float64)
    last, before = torch.tensor(history[-1], dtype=torch.float64), torch.tensor(history[-2], dtype=torch.float64)
    if bool((before <= 0).any()) or not bool(torch.isfinite(last / before).all()):
        raise ValueError(f"dwa: epoch-mean losses must be positive and finite, got {history[-2]} then {history[-1]}")
    return len(last) * torch.softmax(last / before / temperature, dim=0)


class DynamicWeightAverage(StepMethod):
    """``dwa``: weights from the ratio of the last two epochs' mean losses (``--dwa-temperature``)."""

    name = "dwa"

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.history: list[list[float]] = []

    def current_weights(self, ctx: TrainContext) -> torch.Tensor:
        """[T] DWA weights for the epoch in progress."""
        if len(self.history) < 2:
            return torch.ones(len(ctx.tasks), dtype=torch.float64)
        return dwa_weights(self.history, self.temperature)

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        weights = self.current_weights(ctx).tolist()
        names = ctx.task_names
        sum(w * ctx.weights[n] * losses[n] for w, n in zip(weights, names)).backward()  # type: ignore[union-attr]
        return {f"w_{n}": w for n, w in zip(names, weights)}

    def end_epoch(self, ctx: TrainContext, epoch: int, train_losses: dict[str, float]) -> None:
        self.history.append([float(train_losses[n]) for n in ctx.task_names])

    def extra_state(self) -> dict[str, object]:
        return {"history": [list(row) for row in self.history]}

    def load_extra_state(self, state: dict[str, object]) -> None:
        self.history = [[float(v) for v in row] for row in state.get("history", [])]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# GradNorm (Chen et al., ICML 2018)
# ---------------------------------------------------------------------------------------------


def gradnorm_loss(weights: torch.Tensor, grad_norms: torch.Tensor, loss_ratios: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """L_grad = sum_i |G_i - mean_j(G_j) r_i^alpha|, with G_i = w_i ||grad_W L_i||.

    r_i = L~_i / mean_j L~_j is the relative inverse training rate (L~_i = L_i(t) / L_i(0)); the
    target mean(G) r_i^alpha is a constant (no gradient flows through it), as in the paper.

    Args:
        weights: [T] task weights w_i (requires grad).
        grad_norms: [T] ||grad_W L_i|| of the task losses (before the weights w) on the shared layer W.
        loss_ratios: [T] L_i(t) / L_i(0).
        alpha: asymmetry (restoring force strength).
    Returns:
        scalar.
    """
    norms = weights * grad_norms
    rates = loss_ratios / loss_ratios.mean()
    target = (norms.mean() * rates.pow(alpha)).detach()
    return (norms - target).abs().sum()


def call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules owning parameters, in the order one forward calls them."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
             for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for hook in hooks:
            hook.remove()
    return order


def last_common_weight(ctx: TrainContext) -> str:
    """Name of W: the weight (ndim >= 2) reached by every task whose module the forward calls last."""
    x, _ = next(iter(ctx.batches(0, limit=1)))
    sharing = probe_sharing(ctx.model, ctx.task_names, x)
    params = dict(ctx.model.named_parameters())
    common = [n for n, ts in sharing.reach.items() if len(ts) == len(ctx.tasks) and params[n].ndim >= 2]
    if not common or len(ctx.tasks) < 2:
        raise ConfigError("--method gradnorm needs a layer shared by all tasks (two or more); this model has none")
    rank = {name: i for i, name in enumerate(call_order(ctx.model, x))}
    return max(common, key=lambda n: rank.get(n.rsplit(".", 1)[0], -1))


class GradNorm(StepMethod):
    """``gradnorm``: learned task weights balancing the gradient norms on the last shared layer W.

    Weights w_i start at 1, take an Adam step (``--weight-lr``) on ``gradnorm_loss`` after every
    network step, are clamped at 1e-6 (a weight must not change the sign of a loss) and
    renormalised to sum to T. L_i(0) is the loss of the first step, kept in a buffer for resume.
    """

    name = "gradnorm"

    def __init__(self, alpha: float, lr: float) -> None:
        super().__init__()
        self.alpha, self.lr = alpha, lr
        self.task_weights = nn.Parameter(torch.zeros(0))
        self.register_buffer("initial_losses", torch.zeros(0))  # L_i(0); NaN until the first step
        self.layer = ""
        self._optimizer: torch.optim.Optimizer | None = None

    def setup(self, ctx: TrainContext) -> None:
        zero = [n for n in ctx.task_names if ctx.weights[n] <= 0]
        if zero:
            raise ConfigError(f"--method gradnorm needs a positive --task-weights entry for every task, "
                              f"got 0 for {zero}")
        self.layer = last_common_weight(ctx)
        self.task_weights = nn.Parameter(torch.ones(len(ctx.tasks)))
        self.initial_losses = torch.full((len(ctx.tasks),), float("nan"))
        self._optimizer = torch.optim.Adam([self.task_weights], lr=self.lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"task_weights": self._optimizer} if self._optimizer is not None else {}

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        names = ctx.task_names
        W = dict(ctx.model.named_parameters())[self.layer]
        stacked = torch.stack([ctx.weights[n] * losses[n] for n in names])
        norms = torch.stack([
            torch.autograd.grad(stacked[i], W, retain_graph=True)[0].norm() for i in range(len(names))
        ]).detach()
        if bool(torch.isnan(self.initial_losses).any()):
            self.initial_losses.copy_(stacked.detach())
        (self.task_weights.detach() * stacked).sum().backward()
        grad_loss = self.update_weights(norms, stacked.detach() / self.initial_losses)
        out = {f"w_{n}": float(w) for n, w in zip(names, self.task_weights.detach())}
        return {**out, "weight_gradnorm_loss": grad_loss}

    def update_weights(self, grad_norms: torch.Tensor, loss_ratios: torch.Tensor) -> float:
        """One Adam step on ``gradnorm_loss``, then clamp and renormalise to sum T; returns L_grad."""
        loss = gradnorm_loss(self.task_weights, grad_norms, loss_ratios, self.alpha)
        self._optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        loss.backward()
        self._optimizer.step()  # type: ignore[union-attr]
        with torch.no_grad():
            w = self.task_weights.clamp_(min=1e-6)
            w.mul_(len(w) / w.sum())
        return float(loss.detach())
