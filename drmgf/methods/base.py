"""The method interface: every training method runs one epoch given a ``TrainContext``.

Step-level methods (joint training, gradient aggregators, loss weighting) share the per-batch
loop in ``StepMethod`` and only say how a batch's task losses become gradients. Period-level
methods (DR-MGF, Meta-GF) override ``train_epoch``. A method is an ``nn.Module`` so its learned
variables travel in checkpoints; its own optimizers are saved through ``optimizers()``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from drmgf.train.context import TrainContext


class Method(nn.Module):
    """Base class of all training methods.

    Subclasses create their variables in ``setup`` (deterministically, so a resumed run can load
    a checkpoint into them) and implement ``train_epoch``.
    """

    name = "method"

    def setup(self, ctx: TrainContext) -> None:
        """Create method variables once the model, data and optimizer exist."""

    def train_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        """Train one epoch (one period); return mean training losses and method diagnostics."""
        raise NotImplementedError

    def lr_factor(self, epoch: int, epochs: int) -> float:
        """Extra factor on every learning rate in ``epoch`` (DR-MGF halves them in phase 2)."""
        del epoch, epochs
        return 1.0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The method's own optimizers, by name, for checkpoints."""
        return {}

    def extra_state(self) -> dict[str, object]:
        """Plain-data state that is not a tensor of the module (histories, counters)."""
        return {}

    def load_extra_state(self, state: dict[str, object]) -> None:
        del state

    def state(self) -> dict[str, object]:
        """Everything needed to resume the method exactly."""
        return {
            "module": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state(self, state: dict[str, object]) -> None:
        self.load_state_dict(state["module"])  # type: ignore[arg-type]
        for key, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][key])  # type: ignore[index]
        self.load_extra_state(state["extra"])  # type: ignore[arg-type]


class LossMeter:
    """Running means of named scalars over one pass."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, torch.Tensor | float], n: int = 1) -> None:
        for k, v in values.items():
            self.sums[k] += float(v.detach() if isinstance(v, torch.Tensor) else v) * n
            self.counts[k] += n

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: self.sums[k] / max(self.counts[k], 1) for k in self.sums}


class StepMethod(Method):
    """A method that updates the network once per minibatch from that batch's task losses."""

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Fill ``.grad`` of the model parameters from the batch's unweighted task losses."""
        raise NotImplementedError

    def end_epoch(self, ctx: TrainContext, epoch: int, train_losses: dict[str, float]) -> None:
        """Hook after the epoch's last step (e.g. DWA records the epoch's losses)."""

    def train_epoch(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        ctx.model.train()
        meter = LossMeter()
        total = ctx.steps_per_pass()
        for step, (x, targets) in enumerate(ctx.batches(epoch)):
            losses = ctx.losses(ctx.model(x), targets)
            ctx.optimizer.zero_grad(set_to_none=True)
            extra = self.backward(ctx, losses)
            ctx.optimizer.step()
            meter.add({**losses, **extra}, n=x.shape[0])
            ctx.progress("train", step + 1, total, float(sum(losses.values()).detach()))
        logs = meter.means()
        self.end_epoch(ctx, epoch, {n: logs[n] for n in ctx.task_names})
        return logs


class EqualWeighting(StepMethod):
    """Joint training: one backward of sum_t lambda_t L_t (``ew``)."""

    name = "ew"

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        ctx.weighted_sum(losses).backward()
        return {}
