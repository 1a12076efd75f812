"""File helpers for deployment artifacts: hashes and atomic directory replacement."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from drmgf.errors import UserError
from drmgf.utils import default_permissions

MARKER = ".drmgf-artifacts"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_replaceable(target: Path) -> None:
    """Raise a UserError unless ``target`` is absent, empty, or a directory drmgf wrote (marker file)."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MARKER).exists())):
        raise UserError(f"{target} exists and was not written by drmgf; choose another directory or remove it")


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Build a directory next to ``target`` and swap it in only when the block succeeds.

    An existing ``target`` survives any failure; it is replaced only if drmgf wrote it (marker file)
    or it is empty, so a user's own directory is never clobbered.
    """
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    default_permissions(stage)
    try:
        (stage / MARKER).write_text("written by drmgf; replaced as a whole on the next run\n")
        yield stage
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(stage, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
