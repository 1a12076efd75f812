"""Checkpoints: one file with everything needed to resume exactly, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from drmgf.errors import UserError
from drmgf.utils import atomic_torch_save, package_versions

FORMAT = 1
LAST, BEST = "checkpoint.pt", "best.pt"


def save_checkpoint(path: Path, *, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    method_state: dict[str, Any], config: dict[str, Any], history: list[dict[str, Any]],
                    tasks: list[dict[str, Any]]) -> None:
    """Write a full checkpoint after ``epoch`` completed epochs.

    Holds the model, the network optimizer, the method's variables and optimizers, the torch RNG
    state, the configuration, the metric history and the package versions.
    """
    atomic_torch_save({
        "format": FORMAT, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "method": method_state, "rng": torch.get_rng_state(), "config": config, "history": history,
        "tasks": tasks, "versions": package_versions(),
    }, path)


def save_model_only(path: Path, *, epoch: int, model: torch.nn.Module, score: float,
                    config: dict[str, Any], tasks: list[dict[str, Any]], method_state: dict[str, Any]) -> None:
    """Write the best-on-validation weights (with the method's variables, for routes)."""
    atomic_torch_save({"format": FORMAT, "epoch": epoch, "model": model.state_dict(), "score": score,
                       "config": config, "tasks": tasks, "method": method_state,
                       "versions": package_versions()}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file is a ``UserError``."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train first or pass the run directory of a finished run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise UserError(f"{path} is not a readable drmgf checkpoint ({type(exc).__name__}); "
                        "it may be truncated: retrain or restore it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a drmgf checkpoint of format {FORMAT}")
    return ckpt
