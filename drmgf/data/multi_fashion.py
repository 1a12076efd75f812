"""``multi-fashion``: the MultiFashion benchmark of Pareto MTL (Lin et al., 2019).

Two Fashion-MNIST items share one 36x36 canvas: one at the top-left (offset 0, 0) and one at the
bottom-right (offset 8, 8). They overlap in the middle, where the brighter pixel wins. The tasks
``left`` and ``right`` classify the two items. As many pairs as source images, chosen from the
seed: training pairs from the training set, test pairs from the test set.
"""

from __future__ import annotations

import numpy as np
import torch

from drmgf.data import fashion
from drmgf.data.base import DataBundle, Split, holdout, limit
from drmgf.tasks import TaskSpec

CANVAS, OFFSET = 36, 8
TASKS = (
    TaskSpec("left", "classification", len(fashion.CLASSES)),
    TaskSpec("right", "classification", len(fashion.CLASSES)),
)
MEAN, STD = (0.3044,), (0.3640,)  # over the composed training pairs of seed 0


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Overlay items on one canvas with a pixel-wise max.

    Args:
        left: [N, 28, 28] uint8, placed at offset (0, 0).
        right: [N, 28, 28] uint8, placed at offset (8, 8).
    Returns:
        [N, 36, 36] uint8.
    """
    n, h, w = left.shape
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :h, :w] = left
    window = canvas[:, OFFSET:OFFSET + h, OFFSET:OFFSET + w]
    np.maximum(window, right, out=window)
    return canvas


def pairs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two index arrays [n]: a random pairing of ``n`` items, never an item with itself (n > 1)."""
    left, right = rng.permutation(n), rng.permutation(n)
    if n > 1:
        right = np.where(right == left, (right + 1) % n, right)
    return left, right


def make_split(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Split:
    """Composite images [N, 1, 36, 36] uint8 with targets left/right [N] int64."""
    li, ri = pairs(len(images), rng)
    canvas = compose(images[li], images[ri])
    targets = {"left": labels[li].astype(np.int64), "right": labels[ri].astype(np.int64)}
    return Split(torch.from_numpy(canvas[:, None]), {k: torch.from_numpy(v) for k, v in targets.items()})


def load(
    *, seed: int, val_fraction: float, data_dir: str | None = None, limit_train: int | None = None,
    limit_test: int | None = None, **_: object,
) -> DataBundle:
    """MultiFashion pairs with a seeded validation split held out of the (limited) training pairs."""
    folder = fashion.locate(data_dir)
    train_rng, test_rng = (np.random.default_rng([seed, k]) for k in (0, 1))
    train_full = limit(make_split(*fashion.read_split(folder, "train"), train_rng), limit_train, seed)
    test = limit(make_split(*fashion.read_split(folder, "test"), test_rng), limit_test, seed)
    train, val = holdout(train_full, val_fraction, seed)
    names = list(fashion.CLASSES)
    return DataBundle(
        name="multi-fashion", train=train, val=val, test=test, tasks=TASKS, mean=MEAN, std=STD,
        class_names={"left": names, "right": names}, info={"source": str(folder), "data_seed": seed}, hflip=False,
    )
