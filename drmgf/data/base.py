"""In-memory dataset splits, preprocessing and minibatch iteration.

All datasets of the project fit in memory on a small machine; iterating over tensors is several
times faster than a DataLoader with worker processes on 2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from drmgf.tasks import TaskSpec

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class Split:
    """Images and per-task targets of one split.

    Attributes:
        images: [N, C, H, W], uint8 (0..255) or float32 (0..1).
        targets: label name -> [N] int64 class ids, or [N, H, W] int64 (segmentation, -1 = ignore),
            [N, 1, H, W] float depth, [N, 3, H, W] float normals.
    """

    images: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        for name, tensor in self.targets.items():
            if tensor.shape[0] != n:
                raise ValueError(f"target {name!r} has {tensor.shape[0]} rows for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor | slice) -> Split:
        """Rows selected by ``index`` (a view for slices, a copy for index tensors)."""
        return Split(self.images[index], {k: v[index] for k, v in self.targets.items()})


@dataclass
class DataBundle:
    """A dataset ready for training: splits, tasks and the preprocessing a deployed model needs.

    Attributes:
        name: registry name of the dataset.
        train, val, test: splits; ``val`` is held out of the training data by seed.
        tasks: the labels the dataset provides.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        class_names: optional names per classification/segmentation label.
        info: free-form provenance (source path, sizes) saved next to runs.
        hflip: whether ``--augment`` may mirror images horizontally.
    """

    name: str
    train: Split
    val: Split
    test: Split
    tasks: tuple[TaskSpec, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)
    hflip: bool = True  # False where a mirror image changes the labels (multi-fashion's left/right)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def preprocessing(self) -> dict[str, object]:
        """What a deployed model expects, for manifests and ``drmgf infer``."""
        return {
            "layout": "NCHW", "dtype": "float32", "input_shape": list(self.input_shape),
            "scale": 1 / 255 if self.train.images.dtype == torch.uint8 else 1.0,
            "mean": list(self.mean), "std": list(self.std),
            "pixel_range": "0..255 uint8" if self.train.images.dtype == torch.uint8 else "0..1 float",
        }


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Scale to [0, 1] (uint8 input) and normalise per channel.

    Args:
        images: [B, C, H, W] uint8 or float.
    Returns:
        [B, C, H, W] float32.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def augment_crop_flip(images: torch.Tensor, gen: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding and (when ``flip``) random horizontal flip (CIFAR-style), per image.

    Args:
        images: [B, C, H, W] float, already normalised.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    mirror = (torch.rand(b, generator=gen) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    idx = [i for i, f in enumerate(mirror) if f] if flip else []
    if idx:
        out[idx] = out[idx].flip(-1)
    return out


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate(
    split: Split,
    batch_size: int,
    *,
    gen: torch.Generator | None = None,
    drop_last: bool = False,
    max_batches: int | None = None,
) -> Iterator[Batch]:
    """Minibatches of raw images and targets; shuffled when ``gen`` is given.

    Yields:
        (images [B, C, H, W] raw dtype, targets {label: [B, ...]}).
    """
    n = len(split)
    order = torch.randperm(n, generator=gen) if gen is not None else None
    total = num_batches(n, batch_size, drop_last)
    if max_batches is not None:
        total = min(total, max_batches)
    for b in range(total):
        lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
        if order is None:
            yield split.images[lo:hi], {k: v[lo:hi] for k, v in split.targets.items()}
        else:
            idx = order[lo:hi]
            yield split.images[idx], {k: v[idx] for k, v in split.targets.items()}


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off a seeded validation set (``fraction`` of the rows) from a training split."""
    n = len(split)
    n_val = max(1, int(round(n * fraction))) if fraction > 0 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return split.subset(train_idx), split.subset(val_idx)


def limit(split: Split, n: int | None, seed: int) -> Split:
    """A seeded random subset of ``n`` rows (all rows when ``n`` is None or larger)."""
    if n is None or n >= len(split):
        return split
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 104729))
    return split.subset(perm[:n].sort().values)
