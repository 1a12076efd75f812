"""Training engine: the loop (``fit``), checkpoints and evaluation.

Names are imported lazily so that ``drmgf.methods`` can use ``drmgf.train.context`` without a cycle.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Run", "assemble", "evaluate", "evaluate_run", "fit", "load_run"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from drmgf.train.evaluate import evaluate

        return evaluate
    if name in __all__:
        from drmgf.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
