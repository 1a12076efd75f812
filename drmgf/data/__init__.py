"""Dataset registry: one file per dataset, one line per dataset in ``DATASETS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drmgf.config import DataConfig
from drmgf.data import cifar, fashion, multi_fashion, nyuv2, scenes, shapes
from drmgf.data.base import DataBundle, Split

__all__ = ["DATASETS", "DataBundle", "Split", "list_datasets", "load_dataset"]


@dataclass(frozen=True)
class DatasetEntry:
    """How to load a dataset and what to say about it in ``drmgf list``."""

    load: Callable[..., DataBundle]
    help: str


DATASETS: dict[str, DatasetEntry] = {
    "shapes": DatasetEntry(shapes.load, "embedded default: 32x32 procedural shapes, tasks shape/color/size"),
    "fashion-mnist": DatasetEntry(fashion.load, "Fashion-MNIST 28x28 grey, task label (10)"),
    "multi-fashion": DatasetEntry(multi_fashion.load, "MultiFashion 36x36 grey pairs, tasks left/right"),
    "cifar10": DatasetEntry(cifar.load_cifar10, "CIFAR-10 32x32 RGB, task label (pickles or image folder)"),
    "cifar100": DatasetEntry(cifar.load_cifar100, "CIFAR-100 32x32 RGB, tasks fine/coarse"),
    "nyuv2": DatasetEntry(nyuv2.load, "NYUv2 (MTAN .npy layout), tasks semantic/depth/normal"),
    "scenes": DatasetEntry(scenes.load, "embedded dense default: 64x64 rooms, semantic/depth/normal"),
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
