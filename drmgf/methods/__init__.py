"""Method registry: one file per method, one line per method in ``METHODS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drmgf.config import MethodConfig
from drmgf.methods.base import EqualWeighting, Method, StepMethod
from drmgf.methods.ge import GradientEquilibrium
from drmgf.methods.gradients import MGDA, IMTLG, CAGrad, NashMTL, PCGrad
from drmgf.methods.weighting import DynamicWeightAverage, GradNorm, UncertaintyWeighting
from drmgf.methods.drmgf import DRMGF
from drmgf.methods.metagf import MetaGF

__all__ = ["METHODS", "Method", "StepMethod", "build_method", "list_methods"]


@dataclass(frozen=True)
class MethodEntry:
    """How to build a method and what ``drmgf list`` says about it."""

    build: Callable[[MethodConfig], Method]
    help: str


METHODS: dict[str, MethodEntry] = {
    "ew": MethodEntry(lambda cfg: EqualWeighting(), "joint training, equal (lambda-weighted) loss sum"),
    "pcgrad": MethodEntry(lambda cfg: PCGrad(), "PCGrad: project conflicting task gradients (Yu et al. 2020)"),
    "cagrad": MethodEntry(lambda cfg: CAGrad(cfg.cagrad_c), "CAGrad: conflict-averse gradient (Liu et al. 2021)"),
    "mgda": MethodEntry(lambda cfg: MGDA(), "MGDA: min-norm point of the task gradients (Sener & Koltun 2018)"),
    "imtl": MethodEntry(lambda cfg: IMTLG(), "IMTL-G: equal projections on unit task gradients (Liu et al. 2021)"),
    "nash_mtl": MethodEntry(lambda cfg: NashMTL(), "Nash-MTL: bargaining solution G G^T a = 1/a (Navon et al. 2022)"),
    "uw": MethodEntry(lambda cfg: UncertaintyWeighting(cfg.weight_lr), "uncertainty weighting (Kendall et al. 2018)"),
    "dwa": MethodEntry(lambda cfg: DynamicWeightAverage(cfg.dwa_temperature), "dynamic weight average (Liu et al. 2019)"),
    "gradnorm": MethodEntry(lambda cfg: GradNorm(cfg.gradnorm_alpha, cfg.weight_lr), "GradNorm (Chen et al. 2018)"),
    "ge": MethodEntry(lambda cfg: GradientEquilibrium(), "gradient equilibrium for multi-exit models (Li et al. 2019)"),
    "drmgf": MethodEntry(DRMGF, "DR-MGF: task-preferred dynamic routes + meta-weighted fusion of task models"),
    "metagf": MethodEntry(MetaGF, "Meta-GF: per-task passes fused with meta-learned layer/channel weights"),
}


def list_methods() -> list[str]:
    return list(METHODS)


def build_method(cfg: MethodConfig) -> Method:
    return METHODS[cfg.method].build(cfg)
