"""Meta-GF (ECCV 2022), DR-MGF's predecessor (ALGORITHM.md section 5).

The same disentangle-then-fuse period as DR-MGF without dynamic routes. Every shared parameter
tensor is fused as a convex combination of the task models with meta-learned weights:
``layer`` mode, one weight per task and tensor, w = sigmoid(eta); ``channel`` mode, one per task
and output channel, w = exp(T * eta). eta starts at 1, is meta-learned with Adam on the summed
loss, and is smoothed by an EMA after every period. Other tasks' losses weigh 0.1 by default.
"""

from __future__ import annotations

import torch
from torch import nn

from drmgf.config import MethodConfig
from drmgf.methods.fusion import convex_fuse
from drmgf.methods.period import PeriodMethod, escape
from drmgf.train.context import TrainContext

FUSED_ROLES = {"connection", "norm_weight", "norm_bias", "mean"}
ETA_INIT = 1.0


class MetaGF(PeriodMethod):
    """``--method metagf`` (``--metagf-mode layer|channel``).

    Attributes:
        eta: task -> {escaped param name -> eta ([1] in layer mode, [O] in channel mode)}.
    """

    name = "metagf"

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg, alpha_default=0.1)
        self.eta = nn.ModuleDict()
        self._opt: torch.optim.Optimizer | None = None

    def fused_roles(self) -> set[str]:
        return FUSED_ROLES

    def create_variables(self, ctx: TrainContext) -> None:
        params = dict(ctx.model.named_parameters())
        for task in ctx.task_names:
            self.eta[task] = nn.ParameterDict()
        for name, pl in self.plan.items():
            if pl.role not in FUSED_ROLES:
                continue
            size = 1 if self.cfg.metagf_mode == "layer" else params[name].shape[0]
            for task in pl.tasks:
                self.eta[task][escape(name)] = nn.Parameter(torch.full((size,), ETA_INIT))
        self.to(ctx.device)
        etas = list(self.eta.parameters())
        self._opt = torch.optim.Adam(etas, lr=self.cfg.s_lr) if etas else None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"eta": self._opt} if self._opt is not None else {}

    def meta_optimizer(self) -> torch.optim.Optimizer | None:
        return self._opt

    def begin_period(self, ctx: TrainContext, epoch: int) -> None:
        self._old = {k: p.detach().clone() for k, p in self.named_parameters()}

    def end_period(self, ctx: TrainContext, epoch: int) -> None:
        if self.cfg.ema <= 0:
            return
        with torch.no_grad():
            for key, p in self.named_parameters():
                p.mul_(1 - self.cfg.ema).add_(self._old[key], alpha=self.cfg.ema)

    def fusion_weights(self, name: str) -> torch.Tensor:
        """[K, 1] (layer) or [K, O] (channel) non-negative weights of the tasks reaching ``name``."""
        tasks = self.plan[name].tasks
        etas = torch.stack([self.eta[t][escape(name)] for t in tasks])
        if self.cfg.metagf_mode == "layer":
            return torch.sigmoid(etas)
        return torch.exp(len(tasks) * etas)

    def fused(self, w0: dict[str, torch.Tensor], stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n in stacked:
            pis = self.fusion_weights(n)
            if pis.shape[1] == 1:
                pis = pis.expand(pis.shape[0], stacked[n].shape[1])
            out[n] = convex_fuse(w0[n], stacked[n], pis)
        return out
