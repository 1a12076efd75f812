"""``shapes``: the embedded default, a procedural multi-task classification dataset.

Each 32x32 RGB image holds one shape with a class (6 shapes), a colour (6 hues with brightness
jitter) and a size (3 bands), at a random position and rotation, over textured clutter (colour
gratings and distractor strokes) and pixel noise. The three labels share low-level features
(edges, colour blobs) but need different high-level ones, which is what makes the tasks compete
for filters. Fully deterministic given the data seed.
"""

from __future__ import annotations

import numpy as np
import torch

from drmgf.data.base import DataBundle, Split, holdout, limit
from drmgf.tasks import TaskSpec

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "medium", "large")
_RGB = np.array([[1, 0.1, 0.1], [0.1, 0.9, 0.1], [0.15, 0.3, 1], [1, 0.9, 0.1], [0.95, 0.1, 0.95], [0.1, 0.9, 0.95]])
_RADIUS = ((4.0, 5.5), (7.0, 8.5), (10.0, 11.5))
TASKS = (
    TaskSpec("shape", "classification", len(SHAPES)),
    TaskSpec("color", "classification", len(COLORS)),
    TaskSpec("size", "classification", len(SIZES)),
)
SIZE = 32
DEFAULT_TRAIN, DEFAULT_TEST = 8000, 2000


def _mask(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask [n, H, W] of shape ``kind`` in each image's rotated frame (u, v)."""
    au, av = np.abs(u), np.abs(v)
    if kind == 0:
        return u**2 + v**2 < r**2
    if kind == 1:
        return np.maximum(au, av) < 0.82 * r
    if kind == 2:
        return (v < r / 2) & (np.sqrt(3) * u - v < r) & (-np.sqrt(3) * u - v < r)
    if kind == 3:
        return au + av < 1.1 * r
    if kind == 4:
        return ((au < r / 3) & (av < r)) | ((av < r / 3) & (au < r))
    d2 = u**2 + v**2
    return (d2 < r**2) & (d2 > (0.55 * r) ** 2)


def _masks(kind: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks [N, H, W], each image's own shape."""
    out = np.zeros(u.shape, dtype=bool)
    for k in range(len(SHAPES)):
        idx = np.flatnonzero(kind == k)
        out[idx] = _mask(k, u[idx], v[idx], r[idx])
    return out


def _strokes(rng: np.random.Generator, img: np.ndarray, count: int, width: tuple[float, float]) -> np.ndarray:
    """Draw ``count`` straight strokes of random colours across every image [N, 3, H, W]."""
    n = img.shape[0]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) - SIZE / 2
    for _ in range(count):
        theta = rng.uniform(0, np.pi, (n, 1, 1))
        off = rng.uniform(-12, 12, (n, 1, 1))
        dist = np.abs(np.cos(theta) * xx + np.sin(theta) * yy - off)
        stroke = (dist < rng.uniform(*width, (n, 1, 1)))[:, None]
        img = np.where(stroke, rng.uniform(0, 1, (n, 3, 1, 1)), img)
    return img


def _background(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Textured clutter [N, 3, H, W] in [0, 1]: colour gratings plus distractor strokes."""
    img = rng.uniform(0.15, 0.55, (n, 3, 1, 1)) * np.ones((1, 1, SIZE, SIZE))
    for _ in range(2):
        freq = rng.uniform(0.2, 0.9, (n, 1, 1, 1))
        theta = rng.uniform(0, np.pi, (n, 1, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
        amp = rng.uniform(0.03, 0.15, (n, 3, 1, 1))
        img += amp * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    return _strokes(rng, img, 3, (0.5, 1.2))


def generate(n: int, seed: int) -> Split:
    """Render ``n`` images deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)[:, None, None]
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLORS), n)
    size = rng.integers(0, len(SIZES), n)
    lo, hi = np.array(_RADIUS)[size].T
    r = rng.uniform(lo, hi)[:, None, None]
    cx = rng.uniform(r[:, 0, 0] + 1, SIZE - 1 - r[:, 0, 0])[:, None, None]
    cy = rng.uniform(r[:, 0, 0] + 1, SIZE - 1 - r[:, 0, 0])[:, None, None]
    rot = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    dx, dy = xx[0] - cx, yy[0] - cy
    u, v = np.cos(rot) * dx + np.sin(rot) * dy, -np.sin(rot) * dx + np.cos(rot) * dy
    mask = _masks(shape[:, None, None], u, v, r)[:, None]
    fg = _RGB[colour][:, :, None, None] * rng.uniform(0.65, 1.0, (n, 1, 1, 1))
    fg = fg * (1 - 0.25 * (dy / SIZE)[:, None])  # soft shading
    img = np.where(mask, fg, _background(rng, n, yy, xx))
    img = _strokes(rng, img, 1, (0.3, 0.7))  # one thin occluder over the shape
    img = img + rng.normal(0, 0.06, img.shape)
    images = torch.from_numpy(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    targets = {"shape": shape, "color": colour, "size": size}
    return Split(images, {k: torch.from_numpy(v.astype(np.int64)) for k, v in targets.items()})


def load(
    *, seed: int, val_fraction: float, limit_train: int | None = None, limit_test: int | None = None,
    **_: object,
) -> DataBundle:
    """Generate the default splits (``limit_*`` change how many images are rendered)."""
    train_full = generate(limit_train or DEFAULT_TRAIN, seed=seed * 2 + 1)
    test = generate(limit_test or DEFAULT_TEST, seed=seed * 2 + 2)
    train, val = holdout(limit(train_full, limit_train, seed), val_fraction, seed)
    return DataBundle(
        name="shapes", train=train, val=val, test=test, tasks=TASKS,
        mean=(0.42, 0.42, 0.42), std=(0.27, 0.27, 0.27),
        class_names={"shape": list(SHAPES), "color": list(COLORS), "size": list(SIZES)},
        info={"source": "procedural", "data_seed": seed},
    )
