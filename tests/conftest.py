"""Shared tiny fixtures: seeded, fresh per test, a few dozen 32x32 images, models 4 channels wide."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from drmgf.config import TrainConfig
from drmgf.data import shapes
from drmgf.data.base import DataBundle

# The test machines share two cores between several jobs: one thread is faster and keeps
# float summation order fixed within a session.
torch.set_num_threads(1)

TINY_TRAIN, TINY_TEST = 24, 8


def _tiny_config(out: Path, **sections: dict[str, Any]) -> TrainConfig:
    """A run on the registered ``shapes`` data small enough for a unit test.

    24 training images (22 train + 2 val), 8 test images, width 4, batch 8, one epoch.
    ``sections`` override fields: ``tiny_config(p, optim={"epochs": 2})``.
    """
    base = TrainConfig().replace(
        data={"limit_train": TINY_TRAIN, "limit_test": TINY_TEST},
        model={"width": 4},
        optim={"epochs": 1, "batch_size": 8},
        run={"out": str(out), "eval_batch_size": 16},
    )
    return base.replace(**sections) if sections else base


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """``tiny_config(out_dir, **sections)`` for fixtures of any scope."""
    return _tiny_config


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., TrainConfig]:
    """Factory of tiny configs writing under this test's ``tmp_path``: ``make_cfg("run", optim={...})``."""

    def make(name: str = "run", **sections: dict[str, Any]) -> TrainConfig:
        return _tiny_config(tmp_path / name, **sections)

    return make


def build_tiny_bundle(n_train: int = 22, n_val: int = 4, n_test: int = 8) -> DataBundle:
    """A ``shapes`` bundle assembled by hand from ``shapes.generate`` (no registry, no holdout)."""
    return DataBundle(
        name="shapes", train=shapes.generate(n_train, seed=11), val=shapes.generate(n_val, seed=12),
        test=shapes.generate(n_test, seed=13), tasks=shapes.TASKS,
        mean=(0.42, 0.42, 0.42), std=(0.27, 0.27, 0.27),
    )


@pytest.fixture
def tiny_data() -> DataBundle:
    return build_tiny_bundle()


def _file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative path -> digest), to prove nothing changed."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def file_digests() -> Callable[[Path], dict[str, str]]:
    """``file_digests(directory)``: relative path -> sha256 of every file, to prove nothing changed."""
    return _file_digests
