"""Gradient equilibrium for multi-exit networks (Li et al., "Improved Techniques for Training
Adaptive Deep Networks", ICCV 2019).

Joint training of the summed (lambda-weighted) exit losses, while the model rescales the gradient
flowing back into the trunk at every exit so that each trunk point receives the average, not the
sum, of the gradients of the exits after it. The rescaling lives in the model (its
``gradient_equilibrium`` switch, e.g. ``resnet_sdn``); this method turns it on.
"""

from __future__ import annotations

import torch

from drmgf.errors import ConfigError
from drmgf.methods.base import StepMethod
from drmgf.train.context import TrainContext


def model_label(ctx: TrainContext) -> str:
    """How to name the model in a message: its registry name, or its class for a user model."""
    cls = type(ctx.model)
    return ctx.cfg.model.model if cls.__module__.startswith("drmgf.models") else cls.__name__


class GradientEquilibrium(StepMethod):
    """``ge``: summed exit losses with the model's gradient equilibrium switched on."""

    name = "ge"

    def setup(self, ctx: TrainContext) -> None:
        if not hasattr(ctx.model, "gradient_equilibrium"):
            raise ConfigError(f"--method ge needs a multi-exit model with gradient equilibrium (e.g. --model "
                              f"resnet_sdn); model {model_label(ctx)!r} has no `gradient_equilibrium` switch")
        ctx.model.gradient_equilibrium = True

    def backward(self, ctx: TrainContext, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        ctx.weighted_sum(losses).backward()
        return {}
