"""Plumbing shared by the on-disk datasets: the cache, keys, atomic array writes, downloads, limits.

The cache root is ``$DRMGF_CACHE`` (default ``~/.cache/drmgf``). Derived files (decoded images,
rendered scenes) sit in folders keyed by what they were made from, so a changed source or changed
parameters never read stale data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from drmgf.data.base import Split, limit
from drmgf.utils import atomic_write_bytes

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The cache directory: ``$DRMGF_CACHE`` or ``~/.cache/drmgf`` (not created here)."""
    env = os.environ.get("DRMGF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drmgf"


def file_key(path: str | os.PathLike[str]) -> str:
    """A short key that changes when the file at ``path`` is replaced: absolute path + size + mtime."""
    p = Path(path).resolve()
    st = p.stat()
    return params_key({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def params_key(params: dict[str, object]) -> str:
    """A short stable hash of JSON-serialisable parameters."""
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array as ``.npy`` atomically (temporary file, then rename)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def torchvision_download(dataset: str, root: Path) -> bool:
    """Let torchvision download ``dataset`` (``FashionMNIST``, ``CIFAR10``, ``CIFAR100``) into ``root``.

    Returns:
        True when the download finished, False when it failed (offline, server error).
    """
    try:
        import torchvision.datasets as tvd

        getattr(tvd, dataset)(str(root), train=True, download=True)
        return True
    except (ImportError, OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        log.info("torchvision could not download %s: %s", dataset, str(exc).splitlines()[0] if str(exc) else exc)
        return False


def limited_rows(n: int, count: int | None, seed: int) -> np.ndarray:
    """The sorted row indices that ``limit(split, count, seed)`` keeps of an ``n``-row split.

    Lets a loader read or decode only those rows, with exactly the rows a full load would keep.
    """
    rows = Split(torch.zeros((n, 0, 0, 0), dtype=torch.uint8), {"row": torch.arange(n)})
    return limit(rows, count, seed).targets["row"].numpy()
