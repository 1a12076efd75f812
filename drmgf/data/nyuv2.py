"""``nyuv2``: NYU Depth v2 (Silberman et al., 2012) in MTAN's preprocessed layout (Liu et al., 2019).

The layout is ``{train,val}/{image,label,depth,normal}/<i>.npy`` with, per sample, ``image``
[H, W, 3] float in 0..1, ``label`` [H, W] float class ids with -1 = ignore, ``depth`` [H, W, 1]
metres with 0 = no ground truth, ``normal`` [H, W, 3] unit vectors with 0 = no ground truth.
MTAN's ``val`` folder is the test split (654 images; 795 for training); validation is held out of
``train``. The procedural ``scenes`` dataset writes the same layout and reads it through
:func:`read_tree`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from drmgf.data.base import DataBundle, Split, holdout
from drmgf.data.files import limited_rows
from drmgf.errors import DataError
from drmgf.metrics import NYUV2_BASELINE
from drmgf.tasks import TaskSpec

CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv",
           "wall", "window")
MODALITIES = ("image", "label", "depth", "normal")
SPLIT_DIRS = ("train", "val")  # train, test
MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # MTAN feeds raw [0, 1] pixels; kept for comparable numbers
QUANTISED = 1e-4  # images within this of k/255 everywhere are stored as uint8, exactly
MISSING = ("nyuv2 needs --data-dir: the folder of MTAN's preprocessed NYUv2 (github.com/lorenmt/mtan), "
           "with train/ and val/ holding image/, label/, depth/ and normal/ .npy files")


def tasks(num_classes: int = len(CLASSES)) -> tuple[TaskSpec, ...]:
    """The three dense tasks: ``semantic`` segmentation, ``depth`` and surface ``normal``."""
    return (TaskSpec("semantic", "segmentation", num_classes), TaskSpec("depth", "depth"),
            TaskSpec("normal", "normal"))


def sample_ids(folder: Path) -> list[int]:
    """Sorted sample numbers of one split folder, checking all four modalities have the same files."""
    found = {}
    for modality in MODALITIES:
        sub = folder / modality
        if not sub.is_dir():
            raise DataError(f"{sub} is missing (expected {{train,val}}/{{{','.join(MODALITIES)}}}/<i>.npy)")
        found[modality] = {int(p.stem) for p in sub.glob("*.npy") if re.fullmatch(r"\d+", p.stem)}
    ids = sorted(found["image"])
    if not ids:
        raise DataError(f"{folder / 'image'} holds no <i>.npy files")
    for modality in MODALITIES[1:]:
        lacking = sorted(set(ids) ^ found[modality])
        if lacking:
            owner = "image" if lacking[0] not in found["image"] else modality
            path = folder / owner / f"{lacking[0]}.npy"
            raise DataError(f"{path} is missing (every modality needs the same files)")
    return ids


def read_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One ``.npy`` file as float32, checking its shape."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if array.shape != shape:
        raise DataError(f"{path} has shape {list(array.shape)}, expected {list(shape)} like the first sample")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise DataError(f"{path} holds non-numeric or non-finite values")
    return array.astype(np.float32, copy=False)


def _shapes(folder: Path, first: int) -> dict[str, tuple[int, ...]]:
    """Expected per-sample shapes, from the first sample's image."""
    path = folder / "image" / f"{first}.npy"
    try:
        h, w, c = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as an [H, W, 3] image: {exc}") from exc
    if c != 3:
        raise DataError(f"{path} has {c} channels, expected [H, W, 3]")
    return {"image": (h, w, 3), "label": (h, w), "depth": (h, w, 1), "normal": (h, w, 3)}


def _read_images(folder: Path, ids: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Images [N, 3, H, W]: uint8 when every pixel is k/255 (exact), float32 in 0..1 otherwise."""
    out = np.empty((len(ids), 3, *shape[:2]), dtype=np.uint8)
    exact = True
    for row, i in enumerate(ids):
        x = read_array(folder / "image" / f"{i}.npy", shape).transpose(2, 0, 1)
        q = np.clip(np.round(x * 255), 0, 255)
        exact = exact and float(np.abs(q / 255 - x).max()) <= QUANTISED
        out[row] = q
    if exact:
        return torch.from_numpy(out)
    floats = [read_array(folder / "image" / f"{i}.npy", shape).transpose(2, 0, 1) for i in ids]
    return torch.from_numpy(np.clip(np.stack(floats), 0, 1))


def _read_dense(folder: Path, modality: str, ids: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """Stack one dense modality as [N, ...] float32 (channels last, as stored)."""
    out = np.empty((len(ids), *shape), dtype=np.float32)
    for row, i in enumerate(ids):
        out[row] = read_array(folder / modality / f"{i}.npy", shape)
    return out


def read_split(folder: Path, ids: list[int], num_classes: int) -> Split:
    """Samples ``ids`` of one split folder as a :class:`Split` (targets semantic/depth/normal)."""
    shape = _shapes(folder, ids[0])
    label = _read_dense(folder, "label", ids, shape["label"])
    bad = (label != np.round(label)) | (label < -1) | (label >= num_classes)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(f"{folder / 'label' / f'{ids[row]}.npy'} holds labels outside -1..{num_classes - 1}")
    depth = _read_dense(folder, "depth", ids, shape["depth"]).transpose(0, 3, 1, 2)
    normal = _read_dense(folder, "normal", ids, shape["normal"]).transpose(0, 3, 1, 2)
    targets = {"semantic": torch.from_numpy(label.astype(np.int64)),
               "depth": torch.from_numpy(np.ascontiguousarray(depth)),
               "normal": torch.from_numpy(np.ascontiguousarray(normal))}
    return Split(_read_images(folder, ids, shape["image"]), targets)


def find_root(data_dir: str | Path) -> Path:
    """The folder holding ``train/`` and ``val/``: ``data_dir`` or ``data_dir/nyuv2``."""
    base = Path(data_dir).expanduser()
    for root in (base, base / "nyuv2"):
        if all((root / s).is_dir() for s in SPLIT_DIRS):
            return root
    raise DataError(f"--data-dir {data_dir} has no train/ and val/ folders of MTAN's NYUv2 layout")


def read_tree(root: Path, seed: int, limit_train: int | None, limit_test: int | None,
              num_classes: int) -> tuple[Split, Split]:
    """The (limited) training and test splits of a tree; only the kept samples are read."""
    splits = []
    for split_dir, count in zip(SPLIT_DIRS, (limit_train, limit_test)):
        ids = sample_ids(root / split_dir)
        kept = [ids[r] for r in limited_rows(len(ids), count, seed)]
        splits.append(read_split(root / split_dir, kept, num_classes))
    return splits[0], splits[1]


def write_sample(root: Path, split_dir: str, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Store one sample in the layout (``arrays``: modality -> channels-last array as documented).

    Not atomic per file: writers fill a private folder and rename it into place when complete.
    """
    for modality in MODALITIES:
        path = root / split_dir / modality / f"{index}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arrays[modality].astype(np.float32), allow_pickle=False)


def load(
    *, seed: int, val_fraction: float, data_dir: str | None = None, limit_train: int | None = None,
    limit_test: int | None = None, **_: object,
) -> DataBundle:
    """NYUv2 from MTAN's layout; tasks semantic (13 classes), depth and normal."""
    if data_dir is None:
        raise DataError(MISSING)
    root = find_root(data_dir)
    train_full, test = read_tree(root, seed, limit_train, limit_test, len(CLASSES))
    train, val = holdout(train_full, val_fraction, seed)
    return DataBundle(
        name="nyuv2", train=train, val=val, test=test, tasks=tasks(), mean=MEAN, std=STD,
        class_names={"semantic": list(CLASSES)},
        info={"delta_m_baseline": list(NYUV2_BASELINE), "source": str(root), "data_seed": seed},
    )
