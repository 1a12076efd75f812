"""``fashion-mnist``: Zalando's Fashion-MNIST (Xiao et al., 2017), 28x28 grey clothing items.

The four idx files are looked up in ``--data-dir``; without it in Debian's
``dataset-fashion-mnist`` package folder, then in the cache, then downloaded by torchvision when
the machine is online. 60,000 training and 10,000 test images, one 10-class label.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from drmgf.data.base import DataBundle, Split, holdout, limit
from drmgf.data.files import cache_root, torchvision_download
from drmgf.data.idx import read_idx
from drmgf.errors import DataError
from drmgf.tasks import TaskSpec

log = logging.getLogger(__name__)

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
TASKS = (TaskSpec("label", "classification", len(CLASSES)),)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZE = 28
MEAN, STD = (0.2860,), (0.3530,)  # over the 60,000 training images
MISSING = ("Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist`, or pass "
           "--data-dir pointing at a folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
           "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]")


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (plain first: faster to read)."""
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_find(folder, stem) is not None for pair in FILES.values() for stem in pair)


def _layouts(folder: Path) -> list[Path]:
    """Where the idx files may sit under a folder: itself, or torchvision's ``FashionMNIST/raw``."""
    return [folder, folder / "FashionMNIST" / "raw", folder / "raw"]


def locate(data_dir: str | None) -> Path:
    """The folder holding the four idx files, downloading them into the cache as a last resort.

    Raises:
        DataError: ``data_dir`` lacks the files, or none is installed and the download failed.
    """
    if data_dir is not None:
        for folder in _layouts(Path(data_dir).expanduser()):
            if _complete(folder):
                return folder
        raise DataError(f"--data-dir {data_dir} lacks the Fashion-MNIST idx files "
                        f"(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)")
    cache = cache_root() / "fashion-mnist"
    for folder in [DEBIAN_DIR, *_layouts(cache)]:
        if _complete(folder):
            return folder
    log.info("Fashion-MNIST not installed; trying a download into %s", cache)
    if torchvision_download("FashionMNIST", cache) and _complete(cache / "FashionMNIST" / "raw"):
        return cache / "FashionMNIST" / "raw"
    raise DataError(MISSING)


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] uint8 of ``train`` or ``test``, checked."""
    image_stem, label_stem = FILES[split]
    image_path, label_path = _find(folder, image_stem), _find(folder, label_stem)
    if image_path is None or label_path is None:
        raise DataError(f"{folder} lacks {image_stem}[.gz] or {label_stem}[.gz]")
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if images.shape[1:] != (SIZE, SIZE):
        raise DataError(f"{image_path} holds {images.shape[1]}x{images.shape[2]} images, expected {SIZE}x{SIZE}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{label_path} has {labels.shape[0]} labels for {images.shape[0]} images in {image_path}")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{label_path} has label {int(labels.max())}, expected 0..{len(CLASSES) - 1}")
    return images, labels


def to_split(images: np.ndarray, labels: np.ndarray, name: str = "label") -> Split:
    """Tensors of one split: images [N, 1, 28, 28] uint8, labels {name: [N] int64}."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)[:, None])
    return Split(x, {name: torch.from_numpy(labels.astype(np.int64))})


def load(
    *, seed: int, val_fraction: float, data_dir: str | None = None, limit_train: int | None = None,
    limit_test: int | None = None, **_: object,
) -> DataBundle:
    """Fashion-MNIST with a seeded validation split held out of the (limited) training set."""
    folder = locate(data_dir)
    train_full = limit(to_split(*read_split(folder, "train")), limit_train, seed)
    test = limit(to_split(*read_split(folder, "test")), limit_test, seed)
    train, val = holdout(train_full, val_fraction, seed)
    return DataBundle(
        name="fashion-mnist", train=train, val=val, test=test, tasks=TASKS, mean=MEAN, std=STD,
        class_names={"label": list(CLASSES)}, info={"source": str(folder), "data_seed": seed},
    )
