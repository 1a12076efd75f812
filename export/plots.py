"""Figures of the deployment side (matplotlib imported only here, only when drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save atomically (the temporary file keeps the extension matplotlib needs)."""
    import os
    import tempfile

    from drmgf.utils import default_permissions

    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        default_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def routes_figure(document: dict[str, Any], path: Path) -> None:
    """Kept ratio per task and layer (left) and the tasks' route overlap (right)."""
    plt = _pyplot()
    tasks = list(document["tasks"])
    layers = list(dict.fromkeys(layer for t in tasks for layer in document["tasks"][t]["layers"]))
    ratio = np.full((len(tasks), len(layers)), np.nan)
    for i, t in enumerate(tasks):
        for j, layer in enumerate(layers):
            entry = document["tasks"][t]["layers"].get(layer)
            if entry:
                ratio[i, j] = len(entry["kept"]) / entry["filters"]
    overlap = np.eye(len(tasks))
    for key, value in document["overlap"].items():
        a, b = key.split("|")
        overlap[tasks.index(a), tasks.index(b)] = overlap[tasks.index(b), tasks.index(a)] = value
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 0.45 * len(layers) + 5), 3.2 + 0.25 * len(tasks)),
                                      gridspec_kw={"width_ratios": [max(3, len(layers)), max(2, len(tasks))]})
    im = left.imshow(ratio, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    left.set(yticks=range(len(tasks)), yticklabels=tasks, xticks=range(len(layers)), title="kept filters / filters")
    left.set_xticklabels(layers, rotation=70, fontsize=7)
    fig.colorbar(im, ax=left, fraction=0.03)
    im2 = right.imshow(overlap, vmin=0, vmax=1, cmap="magma")
    right.set(xticks=range(len(tasks)), yticks=range(len(tasks)), xticklabels=tasks, yticklabels=tasks,
              title="route overlap (Jaccard)")
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            right.text(j, i, f"{overlap[i, j]:.2f}", ha="center", va="center", fontsize=7,
                       color="white" if overlap[i, j] < 0.6 else "black")
    fig.colorbar(im2, ax=right, fraction=0.046)
    save_figure(fig, path)
    plt.close(fig)
