"""The idx file format of MNIST-style datasets (``*-idx3-ubyte``, ``*-idx1-ubyte``, plain or gzip).

An idx file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in row-major order. Only unsigned bytes (type
0x08) are used by the datasets here.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from drmgf.errors import DataError

UBYTE = 0x08


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The content of ``path``, decompressed when its name ends in ``.gz``."""
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as handle:
                return handle.read()
        return p.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{p} is a truncated or corrupt gzip file ({exc}); download it again") from exc
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror or exc}") from exc


def parse_idx(data: bytes, ndim: int, name: str) -> np.ndarray:
    """Decode an unsigned-byte idx file with ``ndim`` dimensions, checking magic number and size.

    Args:
        data: the whole (decompressed) file.
        ndim: expected number of dimensions (3 for images, 1 for labels).
        name: file name for error messages.
    Returns:
        uint8 array with the shape the header gives (a read-only view of ``data``).
    """
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated: {len(data)} bytes, shorter than an idx header")
    if data[0] != 0 or data[1] != 0 or data[2] != UBYTE or data[3] != ndim:
        raise DataError(f"{name} is not an idx file of {ndim}-d unsigned bytes "
                        f"(magic number 0x{data[:4].hex()}, expected 0x0000{UBYTE:02x}{ndim:02x})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(f"{name} holds {len(data) - header} values but its header promises {expected} "
                        f"(shape {list(dims)}): the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """Read and check one idx file (plain or ``.gz``); see :func:`parse_idx`."""
    return parse_idx(read_bytes(path), ndim, str(path))
