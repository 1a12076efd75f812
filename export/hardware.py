"""Facts about this CPU that decide how fast a pruned graph runs."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_facts() -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (``platform.processor()`` and no flags elsewhere)."""
    model, flags = "", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or "unknown", flags


def channel_block(flags: set[str]) -> int | None:
    """Channels per block of onnxruntime's NCHWc convolutions (MLAS: 16 with AVX-512, 8 with AVX2).

    A conv whose channel count is not a multiple of the block costs about as much as the next multiple.
    """
    if "avx512f" in flags:
        return 16
    return 8 if "avx2" in flags else None


def this_channel_block() -> int:
    """onnxruntime's NCHWc channel block on this machine (1 when unknown)."""
    return channel_block(cpu_facts()[1]) or 1
