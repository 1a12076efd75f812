"""Dataset registry: one file per dataset, one line per dataset in ``DATASETS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drmgf.config import DataConfig
from drmgf.data import shapes
from drmgf.data.base import DataBundle, Split

__all__ = ["DATASETS", "DataBundle", "Split", "list_datasets", "load_dataset"]


@dataclass(frozen=True)
class DatasetEntry:
    """How to load a dataset and what to say about it in ``drmgf list``."""

    load: Callable[..., DataBundle]
    help: str


DATASETS: dict[str, DatasetEntry] = {
    "shapes": DatasetEntry(shapes.load, "embedded default: 32x32 procedural shapes, tasks shape/color/size"),
}


def list_datasets() -> list[str]:
    return list(DATASETS)


def load_dataset(cfg: DataConfig, seed: int | None = None) -> DataBundle:
    """Load the dataset ``cfg.dataset`` with its splits.

    Args:
        cfg: data section of the run configuration.
        seed: overrides ``cfg.data_seed`` (tests).
    """
    entry = DATASETS[cfg.dataset]
    return entry.load(
        seed=cfg.data_seed if seed is None else seed, data_dir=cfg.data_dir,
        val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, limit_test=cfg.limit_test,
    )
