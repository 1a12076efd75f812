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


_GRAPH_MARKERS = {"full": "o", "dense": "s", "pruned": "^"}


def latency_accuracy_figure(points: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy against median latency, one colour per task, one marker per graph kind, annotated.

    Args:
        points: {"task", "graph" (full|dense|pruned), "latency_ms", "metric", "value"} each; one panel
            per metric name, so tasks measured in different units are not mixed on one axis.
        path: the ``.png`` to write.
        title: figure title (says which setting the latency belongs to).
    """
    from drmgf.metrics import HIGHER_IS_BETTER

    plt = _pyplot()
    metrics = list(dict.fromkeys(p["metric"] for p in points))
    tasks = list(dict.fromkeys(p["task"] for p in points))
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [p for p in points if p["metric"] == metric]
        for p in mine:
            ax.scatter(p["latency_ms"], p["value"], color=colours[p["task"]], marker=_GRAPH_MARKERS.get(p["graph"], "x"),
                       s=60, edgecolors="black", linewidths=0.5, zorder=3)
            ax.annotate(f"{p['task']} {p['graph']}", (p["latency_ms"], p["value"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
        latencies = [p["latency_ms"] for p in mine]
        if min(latencies) > 0 and max(latencies) / min(latencies) > 10:
            from matplotlib.ticker import FormatStrFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        ax.set(xlabel="median latency (ms)", ylabel=f"{metric} ({better} is better)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=t) for t, c in colours.items()]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=g) for g, m in _GRAPH_MARKERS.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)
