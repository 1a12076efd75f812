"""Image-folder datasets: ``{train,test}/<class>/*.jpg|png`` in a folder or a tar archive.

The layout may sit under one top-level folder (``cifar10/train/...``). Classes are the sorted
class folder names of ``train``; rows are ordered by class, then by file name. Decoding tens of
thousands of small JPEGs takes seconds, so a full load is decoded once and cached as ``.npy``
arrays keyed by the source (an archive's path, size and mtime; a folder's file listing). A load
that keeps only a small limited subset decodes just those files instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from drmgf.data.base import Split, limit
from drmgf.data.files import cache_root, file_key, limited_rows, params_key, save_npy
from drmgf.errors import DataError
from drmgf.utils import atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
SUFFIXES = (".jpg", ".jpeg", ".png")
SMALL_SUBSET = 0.25  # decode only the kept files when a limit keeps less than this fraction

Reader = Callable[[str], bytes]


@dataclass
class Listing:
    """The image files of a source: per split, (class index, file name) rows in dataset order."""

    classes: list[str]
    files: dict[str, list[tuple[int, str]]]


@dataclass
class ImageData:
    """Decoded splits of an image folder (images [N, 3, H, W] uint8, targets {"label": [N] int64})."""

    train: Split
    test: Split
    classes: list[str]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _layout_rows(names: list[str], source: Path) -> dict[str, list[tuple[str, str]]]:
    """(class name, file name) per split, checking that all files share one top-level prefix."""
    rows: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    prefixes = set()
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
            continue
        if parts[-1].lower().endswith(SUFFIXES):
            prefixes.add(parts[:-3])
            rows[parts[-3]].append((parts[-2], name))
    if len(prefixes) > 1:
        raise DataError(f"{source} holds several train/test layouts ({sorted('/'.join(p) for p in prefixes)[:3]})")
    return rows


def make_listing(names: list[str], source: Path) -> Listing:
    """Parse file names into a :class:`Listing`; a missing split or unknown test class is a DataError."""
    rows = _layout_rows(names, source)
    for split in SPLITS:
        if not rows[split]:
            raise DataError(f"{source} has no {split}/<class>/*.jpg|png images "
                            f"(expected {{train,test}}/<class>/<image> inside)")
    classes = sorted({c for c, _ in rows["train"]})
    unknown = sorted({c for c, _ in rows["test"]} - set(classes))
    if unknown:
        raise DataError(f"{source}: test classes {unknown} have no train folder")
    index = {c: i for i, c in enumerate(classes)}
    files = {s: sorted((index[c], n) for c, n in rows[s]) for s in SPLITS}
    return Listing(classes, files)


def folder_names(path: Path) -> list[str]:
    """Relative POSIX names of the files under a folder, sorted."""
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[tuple[list[str], Reader]]:
    """File names (relative, POSIX) and a reader of their bytes, for a folder or a tar archive."""
    if path.is_dir():
        yield folder_names(path), lambda name: (path / name).read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            yield list(members), lambda name: _extract(tar, members[name])  # stored order
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot read the archive {path}: {exc}") from exc


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise DataError(f"cannot read {member.name} in {tar.name}")
    return handle.read()


def decode(data: bytes, name: str) -> np.ndarray:
    """One image file -> [3, H, W] uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode the image {name}: {exc}") from exc
    return rgb.transpose(2, 0, 1)


def decode_rows(read: Reader, rows: list[tuple[int, str]], order: list[str]) -> Split:
    """Decode ``rows`` (class index, file name) into a split; files are read in ``order``'s order.

    Reading an archive's members in their stored order keeps a gzip stream from rewinding.
    """
    rank = {name: i for i, name in enumerate(order)}
    images: list[np.ndarray | None] = [None] * len(rows)
    for pos in sorted(range(len(rows)), key=lambda i: rank[rows[i][1]]):
        images[pos] = decode(read(rows[pos][1]), rows[pos][1])
    shapes = {img.shape for img in images if img is not None}
    if len(shapes) > 1:
        raise DataError(f"images of different sizes {sorted(shapes)[:3]}: every image must have one size")
    labels = np.array([c for c, _ in rows], dtype=np.int64)
    return Split(torch.from_numpy(np.stack(images)), {"label": torch.from_numpy(labels)})  # type: ignore[arg-type]


def source_key(path: Path) -> str:
    """Cache key: an archive's path+size+mtime, or a folder's listing with sizes and mtimes."""
    if not path.is_dir():
        return file_key(path)
    stats = [(n, st.st_size, st.st_mtime_ns) for n in folder_names(path) for st in [(path / n).stat()]]
    return params_key({"path": str(path.resolve()), "files": stats})


def _cache_dir(key: str) -> Path:
    return cache_root() / "image-folder" / key


def read_cache(key: str) -> ImageData | None:
    """The cached decoded arrays of a source, or None when absent or incomplete."""
    folder = _cache_dir(key)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = {s: Split(torch.from_numpy(np.load(folder / f"{s}_images.npy")),
                           {"label": torch.from_numpy(np.load(folder / f"{s}_labels.npy"))}) for s in SPLITS}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the unreadable cache %s: %s", folder, exc)
        return None
    return ImageData(splits["train"], splits["test"], list(meta["classes"]))


def write_cache(key: str, data: ImageData, source: Path) -> None:
    """Store decoded arrays; ``meta.json`` goes last and marks the entry complete."""
    folder = _cache_dir(key)
    for name, split in (("train", data.train), ("test", data.test)):
        save_npy(folder / f"{name}_images.npy", split.images.numpy())
        save_npy(folder / f"{name}_labels.npy", split.targets["label"].numpy())
    atomic_write_json(folder / "meta.json", {"source": str(source), "classes": data.classes})


def _decode_source(path: Path, seed: int, limits: dict[str, int | None]) -> tuple[ImageData, bool]:
    """Decode all files (second value True) or, for a small limited subset, only the kept ones."""
    with open_source(path) as (names, read):
        listing = make_listing(names, path)
        kept = {s: limited_rows(len(listing.files[s]), limits[s], seed) for s in SPLITS}
        total = sum(len(listing.files[s]) for s in SPLITS)
        full = sum(len(k) for k in kept.values()) >= SMALL_SUBSET * total
        rows = {s: listing.files[s] if full else [listing.files[s][i] for i in kept[s]] for s in SPLITS}
        log.info("decoding %d images of %s", sum(len(r) for r in rows.values()), path)
        splits = {s: decode_rows(read, rows[s], names) for s in SPLITS}
    return ImageData(splits["train"], splits["test"], listing.classes), full


def load_images(path: str | os.PathLike[str], seed: int, limit_train: int | None,
                limit_test: int | None) -> ImageData:
    """Train and test splits of an image folder or archive, limited like ``limit(split, n, seed)``.

    Raises:
        DataError: the source is missing, unreadable, or not in the ``{train,test}/<class>/`` layout.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist")
    key = source_key(p)
    data = read_cache(key)
    if data is None:
        data, full = _decode_source(p, seed, {"train": limit_train, "test": limit_test})
        if not full:
            return data
        try:
            write_cache(key, data, p)
        except OSError as exc:  # a read-only or full cache only costs the next load a decode
            log.warning("could not cache the decoded images in %s: %s", _cache_dir(key), exc)
    return ImageData(limit(data.train, limit_train, seed), limit(data.test, limit_test, seed), data.classes)
