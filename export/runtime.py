"""Running one exported graph on image files and ``.npy`` arrays (the library side of ``drmgf infer``).

The export's ``manifest.json`` says what a graph expects (``input.preprocessing``: NCHW float32,
``scale`` applied to raw pixels, then per-channel ``mean``/``std``) and what each output means
(``tasks[t]``: kind, class names). Inputs are never resized or re-laid-out silently: a wrong size,
channel count or dtype is a :class:`UserError` naming the file and what was expected.

Accepted pixels: ``uint8`` 0..255 and floats in 0..1 (``pixel_range`` says which one the model was
trained on; a model trained on ``uint8`` pixels also accepts floats in 0..1, the same values after
scaling; a model trained on floats rejects ``uint8`` arrays). Image files are 8-bit and always
accepted, converted to ``L`` (1 channel) or ``RGB`` (3 channels).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drmgf.errors import UserError
from drmgf.utils import atomic_write_bytes

MANIFEST = "manifest.json"
UINT8_RANGE = "0..255 uint8"
FLOAT_RANGE = "0..1 float"
MAX_BATCH = 64
IMAGE_MODES = {1: "L", 3: "RGB"}
DENSE_KINDS = ("segmentation", "depth", "normal", "dense")  # "dense": an output the manifest does not describe


@dataclass(frozen=True)
class Preprocessing:
    """What the graph's input expects, from ``manifest["input"]["preprocessing"]``.

    Attributes:
        channels, height, width: one image's shape (C, H, W).
        scale: factor from raw pixels in ``pixel_range`` to 0..1.
        mean, std: per-channel normalisation after scaling, [C] each.
        uint8: True when the model was trained on uint8 pixels (0..255).
    """

    channels: int
    height: int
    width: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    uint8: bool

    @property
    def chw(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"

    @property
    def hw(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def pixels(self) -> str:
        return "uint8 pixels 0..255 (or floats in 0..1)" if self.uint8 else "float pixels in 0..1"


@dataclass
class Sample:
    """One input image: where it came from and its network input.

    Attributes:
        name: file name, with ``[i]`` for the i-th image of a batch array.
        source: the file it was read from.
        x: [C, H, W] float32, preprocessed.
    """

    name: str
    source: Path
    x: np.ndarray


@dataclass
class OutputInfo:
    """How to read one graph output (from ``manifest["tasks"]`` or, failing that, its shape)."""

    name: str
    kind: str
    class_names: list[str] = field(default_factory=list)


def find_manifest(model: Path, override: str | Path | None = None) -> Path:
    """The manifest for ``model``: ``override``, else ``manifest.json`` next to it or one folder up (``dense/``)."""
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise UserError(f"--manifest {path}: no such file; pass the manifest.json that `drmgf export` wrote")
        return path
    for folder in (model.parent, model.parent.parent):
        if (folder / MANIFEST).is_file():
            return folder / MANIFEST
    raise UserError(f"no {MANIFEST} next to {model} or in its parent folder; pass --manifest FILE "
                    "(the manifest.json that `drmgf export` wrote)")


def load_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest, checked for the fields ``infer`` reads."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        prep = manifest["input"]["preprocessing"]
        tasks = manifest.get("tasks", {})
        if not isinstance(prep, dict) or not isinstance(tasks, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not an export manifest (no input.preprocessing); pass the manifest.json "
                        "that `drmgf export` wrote") from None
    return manifest


def preprocessing(manifest: dict[str, Any], where: Path) -> Preprocessing:
    """The :class:`Preprocessing` of a manifest (``where`` names it in errors)."""
    prep = manifest["input"]["preprocessing"]
    try:
        c, h, w = (int(v) for v in prep["input_shape"])
        mean = tuple(float(v) for v in prep["mean"])
        std = tuple(float(v) for v in prep["std"])
        result = Preprocessing(c, h, w, float(prep["scale"]), mean, std, prep["pixel_range"] == UINT8_RANGE)
        bad = (prep.get("layout", "NCHW") != "NCHW" or prep["pixel_range"] not in (UINT8_RANGE, FLOAT_RANGE)
               or len(mean) != c or len(std) != c or min(std) <= 0)
    except (KeyError, TypeError, ValueError):
        bad = True
    if bad:
        raise UserError(f"{where}: input.preprocessing is incomplete or unsupported (needs NCHW layout, "
                        "input_shape, scale, mean/std per channel, pixel_range); re-run `drmgf export`")
    return result


def load_inputs(paths: list[str | Path], prep: Preprocessing) -> list[Sample]:
    """Read and preprocess every input file (a ``.npy`` may hold a batch) in order."""
    samples: list[Sample] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise UserError(f"{path}: no such file")
        if not path.is_file():
            raise UserError(f"{path}: not a file; pass image files or .npy arrays")
        if path.suffix.lower() == ".npy":
            images, batched = _npy_images(path, prep)
            names = [f"{path.name}[{i}]" for i in range(len(images))] if batched else [path.name]
        else:
            images, names = _image_file(path, prep)[None], [path.name]
        samples += [Sample(n, path, normalize(img, prep)) for n, img in zip(names, images)]
    return samples


def _npy_images(path: Path, prep: Preprocessing) -> tuple[np.ndarray, bool]:
    """([N, C, H, W] raw pixels (uint8, or float in 0..1), whether the file held a batch) from a .npy file."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy array ({_first_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path}: not a .npy array (an .npz archive?); save one image or a batch with numpy.save")
    images = _to_nchw(array, path, prep)
    if images.shape[0] == 0:
        raise UserError(f"{path}: an empty batch (shape {array.shape}); pass at least one image")
    return _checked_pixels(images, path, prep), array.ndim == 4


def _to_nchw(array: np.ndarray, path: Path, prep: Preprocessing) -> np.ndarray:
    """HxW (1 channel), CxHxW, HxWxC, NxCxHxW or NxHxWxC -> [N, C, H, W]."""
    c, h, w = prep.channels, prep.height, prep.width
    shape = array.shape
    if array.ndim == 2 and c == 1 and shape == (h, w):
        return array[None, None]
    if array.ndim not in (3, 4):
        raise UserError(f"{path}: array of shape {shape}; expected one image {c}x{h}x{w} (CxHxW) or "
                        f"{h}x{w}x{c} (HxWxC), or a batch Nx{c}x{h}x{w} / Nx{h}x{w}x{c}")
    batch = array if array.ndim == 4 else array[None]
    tail = batch.shape[1:]
    if tail == (c, h, w):
        return batch
    if tail == (h, w, c):
        return batch.transpose(0, 3, 1, 2)
    raise UserError(f"{path}: {_shape_problem(tail, prep)} (array shape {shape}); drmgf infer does not resize "
                    f"or convert: pass {c}x{h}x{w} (CxHxW) or {h}x{w}x{c} (HxWxC) images")


def _shape_problem(tail: tuple[int, ...], prep: Preprocessing) -> str:
    """Which of channels or spatial size is wrong, for a per-image shape of 3 numbers."""
    hw = (prep.height, prep.width)
    if tail[1:] == hw:
        return f"{_channels(tail[0])}, the model expects {prep.channels}"
    if tail[:2] == hw:
        return f"{_channels(tail[2])}, the model expects {prep.channels}"
    if prep.channels in (tail[0], tail[2]):
        got = tail[1:] if tail[0] == prep.channels else tail[:2]
        return f"images are {got[0]}x{got[1]} (HxW), the model expects {prep.hw}"
    return f"per-image shape {tail} fits neither {prep.chw} (CxHxW) nor {prep.hw}x{prep.channels} (HxWxC)"


def _channels(n: int) -> str:
    return f"{n} channel" + ("" if n == 1 else "s")


def _checked_pixels(images: np.ndarray, path: Path, prep: Preprocessing) -> np.ndarray:
    """The array if its dtype and value range fit ``prep``, else a UserError."""
    if images.dtype == np.uint8:
        if not prep.uint8:
            raise UserError(f"{path}: uint8 array, but this model expects {prep.pixels} (float32); "
                            "divide by 255 and save as float32")
        return images
    if images.dtype.kind != "f":
        raise UserError(f"{path}: {images.dtype} array; expected {prep.pixels}")
    if images.size and not np.isfinite(images).all():
        raise UserError(f"{path}: the array holds NaN or infinite values; expected {prep.pixels}")
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise UserError(f"{path}: float values span {lo:.4g}..{hi:.4g}; expected {prep.pixels}")
    return images


def _image_file(path: Path, prep: Preprocessing) -> np.ndarray:
    """[C, H, W] uint8 from an image file, converted to the model's channel count."""
    from PIL import Image, UnidentifiedImageError

    if prep.channels not in IMAGE_MODES:
        raise UserError(f"{path}: image files can feed 1- or 3-channel models, this one has {prep.channels} "
                        "channels; pass a .npy array")
    try:
        with Image.open(path) as image:
            image.load()
            converted = image.convert(IMAGE_MODES[prep.channels])
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: not a readable image ({_first_line(exc)}); pass a PNG/JPEG image or a .npy "
                        "array") from None
    if converted.size != (prep.width, prep.height):
        w, h = converted.size
        raise UserError(f"{path}: image is {h}x{w} (HxW), the model expects {prep.hw}; drmgf infer does not "
                        "resize: resize it first")
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def normalize(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Raw pixels [C, H, W] (uint8, or float in 0..1) -> the network input [C, H, W] float32.

    Pixels in the model's own range are multiplied by ``scale``; the other range is brought to it
    first (uint8 / 255 for a float model, float * 255 for a uint8 model).
    """
    factor = prep.scale
    if image.dtype == np.uint8 and not prep.uint8:
        factor = prep.scale / 255.0
    elif image.dtype != np.uint8 and prep.uint8:
        factor = prep.scale * 255.0
    x = image.astype(np.float32) * np.float32(factor)
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


class Graph:
    """One ONNX graph in an onnxruntime CPU session, checked against the manifest's input shape."""

    def __init__(self, path: Path, prep: Preprocessing, threads: int = 1) -> None:
        from drmgf.export.onnx_io import session

        self.path = path
        self.session = session(path, threads)
        first = self.session.get_inputs()[0]  # type: ignore[attr-defined]
        self.input_name = first.name
        self.output_names = [o.name for o in self.session.get_outputs()]  # type: ignore[attr-defined]
        dims = list(first.shape)[1:]
        fixed = [d if isinstance(d, int) else None for d in dims]
        wanted = [prep.channels, prep.height, prep.width]
        if len(dims) != 3 or any(d is not None and d != e for d, e in zip(fixed, wanted)):
            raise UserError(f"{path} takes input {first.shape} but the manifest says {prep.chw}; pass the "
                            "manifest of this export with --manifest")

    def run(self, x: np.ndarray, batch_size: int = MAX_BATCH) -> dict[str, np.ndarray]:
        """x: [N, C, H, W] float32 -> {output name: [N, ...]}, run in batches of ``batch_size``."""
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for lo in range(0, x.shape[0], batch_size):
            outs = self.session.run(None, {self.input_name: x[lo:lo + batch_size]})  # type: ignore[attr-defined]
            for name, value in zip(self.output_names, outs):
                parts[name].append(np.asarray(value))
        return {n: np.concatenate(v) for n, v in parts.items()}


def output_info(manifest: dict[str, Any], name: str, value: np.ndarray) -> OutputInfo:
    """What output ``name`` is: its manifest task entry, else classification for [N, K], dense otherwise."""
    tasks = manifest.get("tasks", {})
    entries = [e for e in tasks.values() if isinstance(e, dict)]
    entry = tasks.get(name) or next((e for e in entries if e.get("output") == name), None)
    if isinstance(entry, dict) and entry.get("kind"):
        return OutputInfo(name, str(entry["kind"]), [str(c) for c in entry.get("class_names") or []])
    return OutputInfo(name, "classification" if value.ndim == 2 else "dense")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64. logits: [N, K] -> [N, K]."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_classes(probs: np.ndarray, k: int, names: list[str]) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one input (ties: lower index first). probs: [K]."""
    order = sorted(range(probs.shape[0]), key=lambda i: (-float(probs[i]), i))[:k]
    return [{"index": i, "name": names[i] if i < len(names) else None, "prob": float(probs[i])} for i in order]


def classify(value: np.ndarray, info: OutputInfo, k: int) -> list[dict[str, Any]]:
    """Per input: {"kind", "top": [{"index", "name", "prob"}...]}. value: [N, K] logits."""
    if value.ndim != 2:
        raise UserError(f"output {info.name!r} has shape {list(value.shape)}, but the manifest says it is a "
                        "classification output [N, classes]; pass the manifest of this export with --manifest")
    probs = softmax(value)
    return [{"kind": info.kind, "top": top_classes(p, min(k, p.shape[0]), info.class_names)} for p in probs]


def unique_stems(samples: list[Sample]) -> list[str]:
    """A distinct file-name stem per sample: ``img``, ``batch-3``, ``img-2`` for a repeated name."""
    stems, used = [], set()
    for s in samples:
        match = re.fullmatch(r".*\[(\d+)\]", s.name)
        base = s.source.stem + (f"-{match.group(1)}" if match else "")
        stem, n = base, 2
        while stem in used:
            stem, n = f"{base}-{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def save_npy(path: Path, array: np.ndarray) -> None:
    """``numpy.save`` atomically; an unwritable destination is a UserError."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another --out DIR") from None


def write_dense(value: np.ndarray, info: OutputInfo, stems: list[str], out_dir: Path) -> list[dict[str, Any]]:
    """One ``<stem>.<output>.npy`` [C, H, W] per input (segmentation: also ``.labels.npy`` [H, W] int64).

    value: [N, C, H, W]. Returns per input {"kind", "file", "shape"[, "labels_file"]}.
    """
    results = []
    for stem, out in zip(stems, value):
        entry: dict[str, Any] = {"kind": info.kind, "file": str(out_dir / f"{stem}.{info.name}.npy"),
                                 "shape": list(out.shape)}
        save_npy(Path(entry["file"]), np.ascontiguousarray(out, dtype=np.float32))
        if info.kind == "segmentation" and out.ndim == 3:
            entry["labels_file"] = str(out_dir / f"{stem}.{info.name}.labels.npy")
            save_npy(Path(entry["labels_file"]), out.argmax(axis=0).astype(np.int64))
        results.append(entry)
    return results


def infer(model: str | Path, inputs: list[str | Path], *, manifest_path: str | Path | None = None,
          out_dir: str | Path = "infer-out", top: int = 1, threads: int = 1) -> dict[str, Any]:
    """Run one exported graph on ``inputs``; dense outputs are written to ``out_dir``.

    Returns:
        {"model", "manifest", "outputs": {name: kind}, "results": [{"input", "outputs": {name: ...}}]}
        where a classification output gives {"kind", "top": [{"index", "name", "prob"}]} and a
        dense one {"kind", "file", "shape"[, "labels_file"]}.
    """
    model = Path(model)
    if not model.is_file():
        raise UserError(f"{model}: no such ONNX file; pass a graph written by `drmgf export`")
    if not inputs:
        raise UserError("no inputs: pass image files or .npy arrays after the model")
    where = find_manifest(model, manifest_path)
    manifest = load_manifest(where)
    prep = preprocessing(manifest, where)
    graph = Graph(model, prep, threads)
    samples = load_inputs(list(inputs), prep)
    values = graph.run(np.stack([s.x for s in samples]))  # every sample is [C, H, W]: one batch
    kinds, per_output = interpret(values, manifest, unique_stems(samples), Path(out_dir), top)
    results = [{"input": s.name, "file": str(s.source), "outputs": {n: per_output[n][i] for n in per_output}}
               for i, s in enumerate(samples)]
    return {"model": str(model), "manifest": str(where), "outputs": kinds, "results": results}


def interpret(values: dict[str, np.ndarray], manifest: dict[str, Any], stems: list[str], out_dir: Path,
              top: int) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """({output: kind}, {output: one entry per input}): top classes, or dense maps written to ``out_dir``.

    values: {output name: [N, ...]}; stems: N distinct file-name stems.
    """
    kinds, per_output = {}, {}
    for name, value in values.items():
        info = output_info(manifest, name, value)
        kinds[name] = info.kind
        dense = info.kind in DENSE_KINDS
        per_output[name] = write_dense(value, info, stems, out_dir) if dense else classify(value, info, top)
    return kinds, per_output
