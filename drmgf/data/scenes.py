"""``scenes``: the embedded dense default, procedural indoor rooms rendered by ray casting.

Each scene is a room (floor, walls, ceiling, sometimes a window in the back wall) with a few
axis-aligned boxes, spheres and upright cylinders, seen by a pinhole camera with random height,
pitch, yaw and a little roll. Pixels are shaded Lambertian from a point light, with cast shadows,
procedural textures (gratings, floor tiles), a colour gain and sensor noise. Every pixel gets:

- ``semantic``: floor, wall, ceiling, box, sphere, cylinder; -1 (ignore) on the one-pixel rim of
  object silhouettes and on the window, where NYUv2-like sensors give no reliable answer;
- ``depth``: z of the hit point in the camera frame (metres), 0 on the window (no ground truth);
- ``normal``: analytic unit normal of the hit surface in the camera frame (x right, y down,
  z forward; facing the camera), 0 on the window.

The scenes are written in the NYUv2 layout (``{train,val}/{image,label,depth,normal}/<i>.npy``)
into a cache folder keyed by the generation parameters, or into ``--data-dir`` when it is empty
or absent, and loaded by the NYUv2 reader. Scene ``i`` depends only on (seed, split, i).
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from drmgf.data import nyuv2
from drmgf.data.base import DataBundle, holdout
from drmgf.data.files import cache_root, params_key
from drmgf.errors import DataError
from drmgf.utils import atomic_write_json

log = logging.getLogger(__name__)

CLASSES = ("floor", "wall", "ceiling", "box", "sphere", "cylinder")
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER = range(len(CLASSES))
SIZE = 64
FOV_DEG = 60.0  # horizontal and vertical field of view (square images)
DEFAULT_TRAIN, DEFAULT_TEST = 480, 120
MAX_BOXES, MAX_SPHERES, MAX_CYLINDERS = 3, 3, 2
RENDER_VERSION = 1  # bump when the renderer changes: cached scenes of older versions are not reused
MEAN, STD = (0.3708, 0.3524, 0.3287), (0.1931, 0.2045, 0.2212)  # default training scenes, seed 0
# Delta_m baseline B: test metrics of single-task segnet_mtan runs on the default scenes (data seed 0),
# `drmgf train --dataset scenes --model segnet_mtan --method ew --label TASK --epochs 10 --seed 0`
# for TASK = semantic, depth, normal (drmgf 0.1.0, torch 2.14.1, CPU). Order: mIoU, pixel acc,
# depth abs err, depth rel err, normal mean, median, within 11.25, 22.5, 30 degrees.
SINGLE_TASK_BASELINE: tuple[float, ...] | None = (0.3805, 0.8202, 0.5613, 0.1781, 30.90, 25.53, 0.2426, 0.4530, 0.5651)
CHUNK = 32  # scenes rendered per vectorised batch: bounds memory to ~100 MB
EPS = 1e-6


def intrinsics(size: int = SIZE) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels; pixel (u, v) has its centre at (u + 0.5, v + 0.5)."""
    f = size / 2 / np.tan(np.deg2rad(FOV_DEG) / 2)
    return float(f), float(f), size / 2, size / 2


def camera_rays(size: int = SIZE) -> np.ndarray:
    """Unit ray directions in the camera frame, [size * size, 3], row-major pixels."""
    fx, fy, cx, cy = intrinsics(size)
    v, u = np.mgrid[0:size, 0:size] + 0.5
    d = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1).reshape(-1, 3)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation [3, 3] (world: x right, y down, z forward; pitch > 0 looks down)."""
    cp, sp, cy, sy, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


# ---------------------------------------------------------------- scene parameters (one per rng)

def _colour(rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float],
            val: tuple[float, float]) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val)))


def _sample_room(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Room box, camera pose, light and window of one scene (camera at the world origin)."""
    cam_h, room_h = rng.uniform(1.2, 1.7), rng.uniform(2.5, 3.2)
    lo = np.array([-rng.uniform(1.6, 3.2), cam_h - room_h, -rng.uniform(0.5, 1.5)])
    hi = np.array([rng.uniform(1.6, 3.2), cam_h, rng.uniform(4.0, 7.0)])
    angles = np.deg2rad([rng.uniform(5, 25), rng.uniform(-25, 25), rng.uniform(-3, 3)])
    light = np.array([rng.uniform(lo[0] + 0.3, hi[0] - 0.3), lo[1] + rng.uniform(0.2, 0.6),
                      rng.uniform(0.5, hi[2] - 0.5)])
    width, height = rng.uniform(0.6, 1.6), rng.uniform(0.6, 1.2)
    x0, y0 = rng.uniform(lo[0] + 0.3, hi[0] - 0.3 - width), rng.uniform(lo[1] + 0.25, hi[1] - 0.8 - height)
    window = np.array([x0, y0, x0 + width, y0 + height, float(rng.uniform() < 0.6)])
    return {"room_lo": lo, "room_hi": hi, "rot": rotation(*angles), "light": light,
            "power": np.array(rng.uniform(0.9, 1.4)), "window": window}


def _place(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, radius: float,
           taken: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """A free floor position (x, z) for a footprint of ``radius``, or None after 30 tries."""
    for _ in range(30):
        x = rng.uniform(lo[0] + radius + 0.05, hi[0] - radius - 0.05)
        z = rng.uniform(1.0 + radius, hi[2] - radius - 0.1)
        if all(np.hypot(x - tx, z - tz) > radius + tr + 0.05 for tx, tz, tr in taken):
            taken.append((x, z, radius))
            return x, z
    return None


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    return _colour(rng, (0, 1), (0.35, 0.9), (0.45, 0.95))


def _sample_boxes(rng: np.random.Generator, room: dict[str, np.ndarray],
                  taken: list[tuple[float, float, float]]) -> dict[str, np.ndarray]:
    """Up to MAX_BOXES boxes on the floor: bounds lo/hi [K, 3], active [K], colour [K, 3]."""
    lo, hi, act, col = np.zeros((MAX_BOXES, 3)), np.zeros((MAX_BOXES, 3)), np.zeros(MAX_BOXES), np.zeros((MAX_BOXES, 3))
    floor = room["room_hi"][1]
    for k in range(rng.integers(1, MAX_BOXES + 1)):
        sx, sz, h = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6), rng.uniform(0.3, 1.1)
        spot = _place(rng, room["room_lo"], room["room_hi"], float(np.hypot(sx, sz)), taken)
        col[k] = _object_colour(rng)
        if spot is not None:
            lo[k], hi[k], act[k] = [spot[0] - sx, floor - h, spot[1] - sz], [spot[0] + sx, floor, spot[1] + sz], 1
    return {"box_lo": lo, "box_hi": hi, "box_on": act, "box_col": col}


def _sample_spheres(rng: np.random.Generator, room: dict[str, np.ndarray], boxes: dict[str, np.ndarray],
                    taken: list[tuple[float, float, float]]) -> dict[str, np.ndarray]:
    """Up to MAX_SPHERES spheres on the floor or on a box: centre [K, 3], radius [K], active, colour."""
    c, r, act, col = np.zeros((MAX_SPHERES, 3)), np.ones(MAX_SPHERES), np.zeros(MAX_SPHERES), np.zeros((MAX_SPHERES, 3))
    floor = room["room_hi"][1]
    for k in range(rng.integers(1, MAX_SPHERES + 1)):
        r[k], col[k] = rng.uniform(0.15, 0.45), _object_colour(rng)
        b = int(rng.integers(MAX_BOXES))
        if rng.uniform() < 0.35 and boxes["box_on"][b]:
            half = (boxes["box_hi"][b] - boxes["box_lo"][b]) / 2
            r[k] = min(r[k], half[0], half[2])
            top = boxes["box_lo"][b] + half
            c[k], act[k] = [top[0], boxes["box_lo"][b][1] - r[k], top[2]], 1
        elif (spot := _place(rng, room["room_lo"], room["room_hi"], r[k], taken)) is not None:
            c[k], act[k] = [spot[0], floor - r[k], spot[1]], 1
    return {"sph_c": c, "sph_r": r, "sph_on": act, "sph_col": col}


def _sample_cylinders(rng: np.random.Generator, room: dict[str, np.ndarray],
                      taken: list[tuple[float, float, float]]) -> dict[str, np.ndarray]:
    """Up to MAX_CYLINDERS upright cylinders: (x, z, radius, y_top, y_bottom) [K, 5], active, colour."""
    geo, act, col = np.ones((MAX_CYLINDERS, 5)), np.zeros(MAX_CYLINDERS), np.zeros((MAX_CYLINDERS, 3))
    floor = room["room_hi"][1]
    for k in range(rng.integers(0, MAX_CYLINDERS + 1)):
        r, h = rng.uniform(0.1, 0.3), rng.uniform(0.5, 1.6)
        col[k] = _object_colour(rng)
        spot = _place(rng, room["room_lo"], room["room_hi"], r, taken)
        if spot is not None:
            geo[k], act[k] = [spot[0], spot[1], r, floor - h, floor], 1
    return {"cyl": geo, "cyl_on": act, "cyl_col": col}


def _sample_looks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Room colours [3, 3] (floor, wall, ceiling), textures per class, gain and sensor noise."""
    room_col = np.stack([_colour(rng, (0.02, 0.14), (0.25, 0.65), (0.35, 0.75)),
                         _colour(rng, (0, 1), (0.05, 0.35), (0.65, 0.95)),
                         _colour(rng, (0, 1), (0.0, 0.06), (0.8, 1.0))])
    n = len(CLASSES)
    direction = rng.normal(size=(2, n, 3))
    freq = direction / np.linalg.norm(direction, axis=-1, keepdims=True) * rng.uniform(2, 14, (2, n, 1))
    return {"room_col": room_col, "tex_k": freq, "tex_phase": rng.uniform(0, 2 * np.pi, (2, n)),
            "tex_amp": rng.uniform(0.02, 0.14, n), "tile": np.array([rng.uniform(0.3, 0.7), rng.uniform(0, 0.3)]),
            "gain": rng.uniform(0.9, 1.1, 3), "noise": rng.normal(0, 0.02, (SIZE, SIZE, 3))}


def sample_scene(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All parameters of one scene as named arrays."""
    room = _sample_room(rng)
    taken: list[tuple[float, float, float]] = []
    boxes = _sample_boxes(rng, room, taken)
    return {**room, **boxes, **_sample_spheres(rng, room, boxes, taken), **_sample_cylinders(rng, room, taken),
            **_sample_looks(rng)}


def sample_scenes(seed: int, split: int, lo: int, hi: int) -> dict[str, np.ndarray]:
    """Parameters of scenes lo..hi-1 of a split (0 train, 1 test), stacked along a leading axis."""
    scenes = [sample_scene(np.random.default_rng([seed, split, i])) for i in range(lo, hi)]
    return {key: np.stack([s[key] for s in scenes]) for key in scenes[0]}


# ---------------------------------------------------------------- ray casting (vectorised)

def _safe(d: np.ndarray) -> np.ndarray:
    """Directions with exact zeros nudged, so slab divisions never produce 0 * inf."""
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis (of size 3), faster than ``(a * b).sum(-1)``."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def hit_room(d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit point of rays from the origin (inside the room box).

    Args:
        d: [B, P, 3] unit directions (world); lo, hi: [B, 3] room bounds.
    Returns:
        t [B, P], normals [B, P, 3] facing into the room, class ids [B, P] (floor/wall/ceiling).
    """
    d = _safe(d)
    t_axis = np.where(d > 0, hi[:, None], lo[:, None]) / d
    axis = t_axis.argmin(-1)
    t = np.take_along_axis(t_axis, axis[..., None], -1)[..., 0]
    sign = np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    normal = -sign[..., None] * np.eye(3)[axis]
    cls = np.where(axis == 1, np.where(sign > 0, FLOOR, CEILING), WALL)
    return t, normal, cls


def hit_boxes(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray, on: np.ndarray,
              normals: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Slab intersection with axis-aligned boxes.

    Args:
        o: [B, P or 1, 3] origins; d: [B, P, 3] unit directions; lo, hi: [B, K, 3]; on: [B, K].
        normals: compute the normals (shadow rays need only t).
    Returns:
        t [B, K, P] (inf on a miss) and outward normals [B, K, P, 3] (or None).
    """
    inv = 1.0 / _safe(d)
    slabs = []
    for i in range(3):  # per axis: numpy reduces a trailing axis of 3 slowly
        a = (lo[:, :, i, None] - o[:, None, :, i]) * inv[:, None, :, i]
        b = (hi[:, :, i, None] - o[:, None, :, i]) * inv[:, None, :, i]
        slabs.append((np.minimum(a, b), np.maximum(a, b)))
    near = np.maximum(np.maximum(slabs[0][0], slabs[1][0]), slabs[2][0])
    far = np.minimum(np.minimum(slabs[0][1], slabs[1][1]), slabs[2][1])
    t = np.where((on[..., None] > 0) & (near <= far) & (near > EPS), near, np.inf)
    if not normals:
        return t, None
    axis = np.where(near == slabs[0][0], 0, np.where(near == slabs[1][0], 1, 2))  # the slab entered last
    return t, np.stack([-np.sign(inv[:, None, :, i]) * (axis == i) for i in range(3)], -1)


def hit_spheres(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray, on: np.ndarray,
                normals: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Ray-sphere intersection. o: [B, P or 1, 3]; d: [B, P, 3]; c: [B, K, 3]; r, on: [B, K].

    Returns:
        t [B, K, P] (inf on a miss) and outward normals [B, K, P, 3] (None unless ``normals``).
    """
    oc = o[:, None] - c[:, :, None]
    b = _dot(oc, d[:, None])
    disc = b * b - (_dot(oc, oc) - r[..., None] ** 2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    hit = (on[..., None] > 0) & (disc >= 0) & (t > EPS)
    t = np.where(hit, t, np.inf)
    if not normals:
        return t, None
    normal = (oc + np.where(hit, t, 0)[..., None] * d[:, None]) / r[..., None, None]
    return t, normal


def hit_cylinders(o: np.ndarray, d: np.ndarray, geo: np.ndarray, on: np.ndarray,
                  normals: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Upright cylinders with a top cap. geo: [B, K, 5] (x, z, radius, y_top, y_bottom); see hit_spheres."""
    x, z, r, top, bottom = (geo[..., i, None] for i in range(5))
    ox, oy, oz = o[:, None, :, 0] - x, o[:, None, :, 1], o[:, None, :, 2] - z
    dx, dy, dz = (_safe(d)[:, None, :, i] for i in range(3))
    a, b, c = dx * dx + dz * dz, ox * dx + oz * dz, ox * ox + oz * oz - r * r
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / np.maximum(a, 1e-12)
    y_side = oy + t_side * dy
    side = (disc >= 0) & (t_side > EPS) & (y_side >= top) & (y_side <= bottom)
    t_cap = (top - oy) / dy
    cap = (t_cap > EPS) & ((ox + t_cap * dx) ** 2 + (oz + t_cap * dz) ** 2 <= r * r)
    t = np.minimum(np.where(side, t_side, np.inf), np.where(cap, t_cap, np.inf))
    t = np.where(on[..., None] > 0, t, np.inf)
    if not normals:
        return t, None
    on_cap = cap & (t == t_cap)
    tt = np.where(np.isfinite(t), t, 0)
    radial = np.stack([ox + tt * dx, np.zeros_like(tt), oz + tt * dz], -1) / r[..., None]
    return t, np.where(on_cap[..., None], np.array([0.0, -1.0, 0.0]), radial)


def hit_objects(o: np.ndarray, d: np.ndarray, s: dict[str, np.ndarray],
                normals: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """All objects of a batch of scenes: t [B, M, P] and normals [B, M, P, 3] (or None),
    M = boxes + spheres + cylinders."""
    parts = [hit_boxes(o, d, s["box_lo"], s["box_hi"], s["box_on"], normals),
             hit_spheres(o, d, s["sph_c"], s["sph_r"], s["sph_on"], normals),
             hit_cylinders(o, d, s["cyl"], s["cyl_on"], normals)]
    t = np.concatenate([p[0] for p in parts], 1)
    return t, np.concatenate([p[1] for p in parts], 1) if normals else None  # type: ignore[misc]


OBJECT_CLASSES = np.array([BOX] * MAX_BOXES + [SPHERE] * MAX_SPHERES + [CYLINDER] * MAX_CYLINDERS)


def cast(s: dict[str, np.ndarray], d: np.ndarray) -> dict[str, np.ndarray]:
    """Nearest surface along every primary ray.

    Args:
        s: scene parameters [B, ...]; d: [B, P, 3] world directions from the origin.
    Returns:
        t [B, P], normal [B, P, 3] (world), cls [B, P], obj [B, P] (object index, -1 = room), albedo [B, P, 3].
    """
    t_room, n_room, cls_room = hit_room(d, s["room_lo"], s["room_hi"])
    t_obj, n_obj = hit_objects(np.zeros((len(d), 1, 3)), d, s)
    k = t_obj.argmin(1)
    t_near = np.take_along_axis(t_obj, k[:, None], 1)[:, 0]
    use = t_near < t_room
    n_near = np.take_along_axis(n_obj, k[:, None, :, None], 1)[:, 0]
    colours = np.concatenate([s["box_col"], s["sph_col"], s["cyl_col"]], 1)
    albedo_obj = np.take_along_axis(colours, k[..., None], 1)
    albedo_room = np.take_along_axis(s["room_col"], cls_room[..., None], 1)
    return {"t": np.where(use, t_near, t_room), "normal": np.where(use[..., None], n_near, n_room),
            "cls": np.where(use, OBJECT_CLASSES[k], cls_room), "obj": np.where(use, k, -1),
            "albedo": np.where(use[..., None], albedo_obj, albedo_room)}


# ---------------------------------------------------------------- shading and ground truth

def texture(s: dict[str, np.ndarray], p: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Multiplicative texture [B, P] from world points p [B, P, 3]: two gratings per class, floor tiles."""
    k = np.take_along_axis(s["tex_k"], cls[:, None, :, None], 2)  # [B, 2, P, 3]
    phase = np.take_along_axis(s["tex_phase"], cls[:, None], 2)  # [B, 2, P]
    amp = np.take_along_axis(s["tex_amp"], cls, 1)
    wave = np.sin(_dot(k, p[:, None]) + phase)
    tex = 1 + amp * (wave[:, 0] + 0.5 * wave[:, 1])
    size, contrast = s["tile"][:, :1], s["tile"][:, 1:]
    tiles = (np.floor(p[..., 0] / size) + np.floor(p[..., 2] / size)) % 2
    return tex * np.where(cls == FLOOR, 1 - contrast * tiles, 1.0)


def shade(s: dict[str, np.ndarray], p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Lambertian light [B, P] from the point light, with cast shadows and distance falloff."""
    to_light = s["light"][:, None] - p
    dist = np.sqrt(_dot(to_light, to_light))
    l_dir = to_light / dist[..., None]
    t_block, _ = hit_objects(p + 1e-4 * n, l_dir, s, normals=False)
    lit = (t_block.min(1) >= dist).astype(float)
    lambert = np.maximum(_dot(n, l_dir), 0)
    return 0.3 + s["power"][:, None] * lambert * lit * 5.0 / (2.5 + dist**2)


def silhouette(obj: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another surface. obj: [B, H, W] ids (-1 = room) -> bool."""
    pad = np.pad(obj, ((0, 0), (1, 1), (1, 1)), mode="edge")
    differs = [pad[:, 1:-1, :-2], pad[:, 1:-1, 2:], pad[:, :-2, 1:-1], pad[:, 2:, 1:-1]]
    return (obj >= 0) & np.any([nb != obj for nb in differs], axis=0)


def window_mask(s: dict[str, np.ndarray], p: np.ndarray, hit: dict[str, np.ndarray]) -> np.ndarray:
    """Pixels [B, P] that see the window on the back wall."""
    x0, y0, x1, y1, on = (s["window"][:, i, None] for i in range(5))
    back = (hit["obj"] < 0) & (np.abs(p[..., 2] - s["room_hi"][:, 2:3]) < 1e-6)
    return back & (on > 0) & (p[..., 0] >= x0) & (p[..., 0] <= x1) & (p[..., 1] >= y0) & (p[..., 1] <= y1)


def render(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Render a batch of scenes.

    Returns:
        image [B, H, W, 3] in k/255, label [B, H, W] (-1 = ignore), depth [B, H, W, 1] (0 = none),
        normal [B, H, W, 3] (camera frame, 0 = none); all float32, the NYUv2 layout per sample.
    """
    b, rays = len(s["rot"]), camera_rays()
    d = np.einsum("bij,pj->bpi", s["rot"], rays)
    hit = cast(s, d)
    p = hit["t"][..., None] * d
    window = window_mask(s, p, hit)
    colour = hit["albedo"] * (texture(s, p, hit["cls"]) * shade(s, p, hit["normal"]))[..., None]
    sky = np.array([0.78, 0.88, 1.0]) * (1.05 - 0.15 * (p[..., 1:2] - s["window"][:, None, 1:2]))
    colour = np.where(window[..., None], sky, colour).reshape(b, SIZE, SIZE, 3)
    colour = np.clip(colour * s["gain"][:, None, None] + s["noise"], 0, 1)
    label = np.where(window, -1, hit["cls"]).reshape(b, SIZE, SIZE)
    label[silhouette(hit["obj"].reshape(b, SIZE, SIZE))] = -1
    valid = ~window[..., None]
    normal = np.where(valid, np.einsum("bpi,bij->bpj", hit["normal"], s["rot"]), 0)
    depth = np.where(valid, hit["t"][..., None] * rays[None, :, 2:], 0)
    return {"image": (np.round(colour * 255) / 255).astype(np.float32), "label": label.astype(np.float32),
            "depth": depth.reshape(b, SIZE, SIZE, 1).astype(np.float32),
            "normal": normal.reshape(b, SIZE, SIZE, 3).astype(np.float32)}


# ---------------------------------------------------------------- on-disk tree and loader

def write_split(root: Path, split_dir: str, seed: int, split: int, n: int) -> None:
    """Render scenes 0..n-1 of a split and store them in the NYUv2 layout under ``root``."""
    for lo in range(0, n, CHUNK):
        params = sample_scenes(seed, split, lo, min(n, lo + CHUNK))
        out = render(params)
        for j in range(len(params["rot"])):
            nyuv2.write_sample(root, split_dir, lo + j, {m: out[m][j] for m in nyuv2.MODALITIES})


def generation_params(seed: int, n_train: int, n_test: int) -> dict[str, object]:
    return {"dataset": "scenes", "version": RENDER_VERSION, "size": SIZE, "seed": seed, "train": n_train,
            "test": n_test}


def render_tree(root: Path, params: dict[str, object]) -> None:
    """Render a full tree into a private folder next to ``root``, then rename it into place.

    ``root`` must be absent or an empty folder; when another process finished first, its tree is kept.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for split, (split_dir, key) in enumerate(zip(nyuv2.SPLIT_DIRS, ("train", "test"))):
            write_split(tmp, split_dir, int(params["seed"]), split, int(params[key]))  # type: ignore[call-overload]
        atomic_write_json(tmp / "scenes.json", params)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the tree is an ordinary folder
        os.replace(tmp, root)
    except OSError as exc:
        if not (root / "scenes.json").is_file():
            raise DataError(f"cannot write the scenes into {root}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_tree(root: Path, params: dict[str, object], user_dir: bool) -> None:
    """Make sure ``root`` holds the scenes of ``params``, rendering them when it is empty or absent."""
    marker = root / "scenes.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != params:
            raise DataError(f"{root} holds scenes rendered with other parameters ({marker}); pass an empty folder")
        return
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir {root} is a file; scenes are written into a folder")
    if root.exists() and any(root.iterdir()):
        what = "--data-dir" if user_dir else "the cache folder"
        raise DataError(f"{what} {root} is not empty and holds no scenes.json; pass an empty or new folder")
    log.info("rendering %s train and %s test scenes into %s", params["train"], params["test"], root)
    render_tree(root, params)


def load(
    *, seed: int, val_fraction: float, data_dir: str | None = None, limit_train: int | None = None,
    limit_test: int | None = None, **_: object,
) -> DataBundle:
    """Render (once) and load the scenes; ``limit_*`` change how many scenes are rendered."""
    params = generation_params(seed, limit_train or DEFAULT_TRAIN, limit_test or DEFAULT_TEST)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
    else:
        root = cache_root() / "scenes" / params_key(params)
    ensure_tree(root, params, user_dir=data_dir is not None)
    train_full, test = nyuv2.read_tree(root, seed, None, None, len(CLASSES))
    train, val = holdout(train_full, val_fraction, seed)
    fx, fy, cx, cy = intrinsics()
    info: dict[str, object] = {"source": str(root), "data_seed": seed,
                               "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy}}
    if SINGLE_TASK_BASELINE is not None:
        info["delta_m_baseline"] = list(SINGLE_TASK_BASELINE)
    return DataBundle(name="scenes", train=train, val=val, test=test, tasks=nyuv2.tasks(len(CLASSES)),
                      mean=MEAN, std=STD, class_names={"semantic": list(CLASSES)}, info=info)
