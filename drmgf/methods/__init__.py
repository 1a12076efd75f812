"""Method registry: one file per method, one line per method in ``METHODS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drmgf.config import MethodConfig
from drmgf.methods.base import EqualWeighting, Method, StepMethod
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
    "drmgf": MethodEntry(DRMGF, "DR-MGF: task-preferred dynamic routes + meta-weighted fusion of task models"),
    "metagf": MethodEntry(MetaGF, "Meta-GF: per-task passes fused with meta-learned layer/channel weights"),
}


def list_methods() -> list[str]:
    return list(METHODS)


def build_method(cfg: MethodConfig) -> Method:
    return METHODS[cfg.method].build(cfg)
