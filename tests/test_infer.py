"""``drmgf infer`` (``drmgf.export.runtime``): one exported classification run (exit0 only, so ``full.onnx``
also has an output the manifest does not describe) and one pruned SegNet graph with a hand-written
manifest; predictions equal onnxruntime on the training preprocessing; every input error is one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from drmgf.config import TrainConfig
from drmgf.data import shapes
from drmgf.data.base import normalize as train_normalize
from drmgf.export.exporter import export_run
from drmgf.export.onnx_io import INPUT_NAME, export_onnx
from drmgf.export.groups import channel_groups
from drmgf.export.prune import prune_task, union_routes
from drmgf.export.routes import RouteRule, keep_top
from drmgf.export.routes_run import routes_for_run
from drmgf.export.runtime import OutputInfo, Preprocessing, Sample, normalize, unique_stems, write_dense
from drmgf.export.tasknet import copy_with_names, task_nets
from drmgf.methods.sharing import probe_sharing
from drmgf.models import build_model
from drmgf.tasks import TaskSpec
from drmgf.train import fit
from tests.helpers import assert_one_line_error as _one_line_error
from tests.helpers import run_cli

SEG_CLASSES = ["floor", "wall", "table", "chair", "lamp", "door"]
SEG_PREP = {"layout": "NCHW", "dtype": "float32", "input_shape": [3, 32, 32], "scale": 1.0,
            "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.3], "pixel_range": "0..1 float"}


def infer_json(*argv: str) -> dict[str, Any]:
    code, stdout, stderr = run_cli(["infer", *argv, "--json"])
    assert code == 0, stderr
    return json.loads(stdout)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., TrainConfig]) -> Path:
    """``RUN/export`` of a 1-epoch DR-MGF resnet_sdn run with 2 exits, exported with ``--tasks exit0``."""
    run = tmp_path_factory.mktemp("infer") / "run"
    fit(tiny_config(run, data={"limit_train": 64, "limit_test": 32}, model={"exit_every": 2},
                    method={"method": "drmgf", "period_steps": 2}))
    routes_for_run(run, RouteRule(rule="keep-ratio", keep_ratio=0.5), plot=False)
    export_run(run, tasks=["exit0"])
    return run / "export"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four ``shapes`` test images [4, 3, 32, 32] uint8, saved as .npy in every layout and as PNGs."""
    root = tmp_path_factory.mktemp("images")
    pixels = shapes.generate(4, seed=5).images.numpy()
    np.save(root / "chw.npy", pixels[0])
    np.save(root / "hwc.npy", pixels[0].transpose(1, 2, 0))
    np.save(root / "unit.npy", pixels[0].astype(np.float32) / 255)
    np.save(root / "batch.npy", pixels)
    np.save(root / "batch_nhwc.npy", pixels.transpose(0, 2, 3, 1))
    Image.fromarray(pixels[0].transpose(1, 2, 0)).save(root / "img.png")
    Image.fromarray(pixels[1].transpose(1, 2, 0)).convert("L").save(root / "grey.png")
    return {"root": root, "pixels": pixels}


def expected_probs(path: Path, pixels: np.ndarray, manifest: dict[str, Any]) -> list[np.ndarray]:
    """Softmax of onnxruntime's outputs on the training preprocessing (``drmgf.data.base.normalize``)."""
    import onnxruntime as ort

    prep = manifest["input"]["preprocessing"]
    x = train_normalize(torch.from_numpy(pixels), tuple(prep["mean"]), tuple(prep["std"])).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [softmax(out) for out in sess.run(None, {INPUT_NAME: x})]


@pytest.fixture(scope="module")
def segnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A pruned segnet_mtan (width 2) ``semantic`` graph with a hand-written manifest: (graph, pruned module)."""
    torch.manual_seed(0)
    tasks = (TaskSpec("semantic", "segmentation", 6), TaskSpec("depth", "depth"))
    model = build_model("segnet_mtan", tasks, 3, width=2)
    for m in model.modules():  # BatchNorm statistics of real-looking inputs, so outputs are O(1)
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    net = task_nets(model, probe_sharing(model, ["semantic", "depth"], x))["semantic"]
    params = dict(model.named_parameters())
    chosen = {layer: keep_top(params[f"{layer}.weight"].detach().flatten(1).norm(dim=1), 0.5)
              for layer in net.route_layers}
    module, names = copy_with_names(net)
    pruned = prune_task(net, union_routes(channel_groups(module, x[:1], names, net.couplings), chosen), x[:1])
    root = tmp_path_factory.mktemp("segnet")
    export_onnx(pruned, x, root / "semantic.onnx", ["semantic"], 18)
    manifest = {"schema": "drmgf.export/1",
                "input": {"name": INPUT_NAME, "shape": [3, 32, 32], "preprocessing": SEG_PREP},
                "tasks": {"semantic": {"output": "semantic", "kind": "segmentation", "num_classes": 6,
                                       "class_names": SEG_CLASSES, "output_shape": [6, 32, 32]}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "semantic.onnx", pruned


def test_help_names_the_inputs_and_every_flag() -> None:
    code, out, _ = run_cli(["infer", "--help"])
    text = " ".join(out.split())
    assert code == 0 and text.startswith("usage: drmgf infer [-h] [--manifest FILE] [--top K] [--out DIR] [--json] "
                                         "MODEL.onnx INPUT [INPUT ...]")
    for fragment in ("uint8 0..255 or float 0..1 as the manifest's pixel_range says; never resized",
                     "--manifest FILE the export's manifest.json (default: next to MODEL, or one folder up for dense/)",
                     "--top K classification: show the K best classes (default: 1)",
                     "--out DIR dense outputs: one .npy per input and output here (default: ./infer-out)",
                     "--json print one JSON document instead of a table"):
        assert fragment in text, fragment
    code, out, _ = run_cli(["--help"])
    assert code == 0 and "infer" in out and "run one exported ONNX graph" in " ".join(out.split())


# --- classification -----------------------------------------------------------------------------------

def test_npy_and_png_print_the_top_class_and_its_probability(export_dir: Path, images: dict[str, Any]) -> None:
    root = images["root"]
    argv = ["infer", str(export_dir / "exit0.onnx"), str(root / "chw.npy"), str(root / "img.png")]
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    manifest = json.loads((export_dir / "manifest.json").read_text())
    probs = expected_probs(export_dir / "exit0.onnx", images["pixels"][:1], manifest)[0][0]
    best = int(probs.argmax())
    lines = stdout.splitlines()
    assert lines[0].split() == ["input", "output", "prediction"] and set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["chw.npy", "exit0", shapes.SHAPES[best], f"{probs[best]:.4f}"]
    assert lines[3].split() == ["img.png", "exit0", shapes.SHAPES[best], f"{probs[best]:.4f}"]
    assert len(lines) == 4 and stderr == ""


def test_json_gives_the_preprocessed_softmax_for_every_layout(export_dir: Path, images: dict[str, Any]) -> None:
    root = images["root"]
    files = ["chw.npy", "hwc.npy", "unit.npy", "img.png", "batch.npy", "batch_nhwc.npy"]
    doc = infer_json(str(export_dir / "exit0.onnx"), *(str(root / f) for f in files), "--top", "6")
    assert set(doc) == {"model", "manifest", "outputs", "results"}
    assert doc["manifest"] == str(export_dir / "manifest.json") and doc["outputs"] == {"exit0": "classification"}
    names = [r["input"] for r in doc["results"]]
    assert names == files[:4] + [f"batch.npy[{i}]" for i in range(4)] + [f"batch_nhwc.npy[{i}]" for i in range(4)]
    manifest = json.loads((export_dir / "manifest.json").read_text())
    probs = expected_probs(export_dir / "exit0.onnx", images["pixels"], manifest)[0]
    rows = [probs[0]] * 4 + list(probs) + list(probs)
    for result, expected in zip(doc["results"], rows):
        assert set(result) == {"input", "file", "outputs"} and list(result["outputs"]) == ["exit0"]
        top = result["outputs"]["exit0"]["top"]
        assert result["outputs"]["exit0"]["kind"] == "classification" and len(top) == 6
        assert [c["prob"] for c in top] == sorted((c["prob"] for c in top), reverse=True)
        assert [c["name"] for c in top] == [shapes.SHAPES[c["index"]] for c in top]
        got = np.zeros(6)
        got[[c["index"] for c in top]] = [c["prob"] for c in top]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_top_k_lists_the_k_best_classes(export_dir: Path, images: dict[str, Any]) -> None:
    grey = str(images["root"] / "grey.png")
    code, stdout, stderr = run_cli(["infer", str(export_dir / "exit0.onnx"), grey, "--top", "3"])
    assert code == 0, stderr
    header, _, row = stdout.splitlines()
    assert header.split()[:3] == ["input", "output", "top"] and "softmax probability" in header
    assert row.startswith("grey.png") and row.count(",") == 2
    assert all(name in shapes.SHAPES for name in row.split()[2::2])
    code, _, err = run_cli(["infer", str(export_dir / "exit0.onnx"), grey, "--top", "0"])
    assert code == 2 and "--top must be >= 1, got 0" in err


def test_full_graph_reports_every_output_and_names_only_those_the_manifest_describes(
        export_dir: Path, images: dict[str, Any]) -> None:
    doc = infer_json(str(export_dir / "full.onnx"), str(images["root"] / "img.png"))
    assert doc["outputs"] == {"exit0": "classification", "exit1": "classification"}
    outputs = doc["results"][0]["outputs"]
    assert outputs["exit0"]["top"][0]["name"] in shapes.SHAPES
    assert outputs["exit1"]["top"][0]["name"] is None  # exported with --tasks exit0: no class names for exit1
    code, stdout, _ = run_cli(["infer", str(export_dir / "full.onnx"), str(images["root"] / "img.png")])
    assert code == 0 and f"exit1   class {outputs['exit1']['top'][0]['index']} " in stdout


def test_dense_twin_finds_the_manifest_one_folder_up_and_a_moved_graph_needs_manifest(
        export_dir: Path, images: dict[str, Any], tmp_path: Path) -> None:
    image = str(images["root"] / "img.png")
    doc = infer_json(str(export_dir / "dense" / "exit0.onnx"), image)
    assert doc["manifest"] == str(export_dir / "manifest.json")
    moved = tmp_path / "models" / "exit0.onnx"
    moved.parent.mkdir()
    moved.write_bytes((export_dir / "exit0.onnx").read_bytes())
    code, stdout, err = run_cli(["infer", str(moved), image])
    assert code == 1 and stdout == "" and "pass --manifest FILE" in err and str(moved) in err
    assert_one_line_error(err)
    assert infer_json(str(moved), image, "--manifest", str(export_dir / "manifest.json"))["results"]


# --- dense outputs ------------------------------------------------------------------------------------

def test_segmentation_writes_maps_and_label_maps_equal_to_pytorch(segnet: tuple[Path, nn.Module],
                                                                  tmp_path: Path) -> None:
    graph, pruned = segnet
    gen = np.random.default_rng(0)
    batch = gen.random((2, 3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "scene.npy", batch)
    png = (gen.random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(png).save(tmp_path / "scene.png")  # the batch is scene-0, scene-1; the PNG keeps "scene"
    out = tmp_path / "maps"
    doc = infer_json(str(graph), str(tmp_path / "scene.npy"), str(tmp_path / "scene.png"), "--out", str(out))
    assert doc["outputs"] == {"semantic": "segmentation"}
    stems = ["scene-0", "scene-1", "scene"]
    written = sorted(f"{s}.semantic{x}.npy" for s in stems for x in ("", ".labels"))
    assert sorted(p.name for p in out.iterdir()) == written  # atomically: no temporary left
    pixels = np.concatenate([batch, png.transpose(2, 0, 1)[None].astype(np.float32) / 255])
    mean, std = (np.array(SEG_PREP[k], dtype=np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = pruned(torch.from_numpy((pixels - mean) / std)).numpy()
    assert np.abs(expected).max() > 0.1
    for stem, result, want in zip(stems, doc["results"], expected):
        entry = result["outputs"]["semantic"]
        assert entry == {"kind": "segmentation", "file": str(out / f"{stem}.semantic.npy"), "shape": [6, 32, 32],
                         "labels_file": str(out / f"{stem}.semantic.labels.npy")}
        maps, labels = np.load(entry["file"]), np.load(entry["labels_file"])
        assert maps.dtype == np.float32 and labels.dtype == np.int64 and labels.shape == (32, 32)
        np.testing.assert_allclose(maps, want, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(labels, maps.argmax(axis=0))


def test_segnet_graph_matches_pytorch_at_batch_1_and_3_and_text_lists_the_files(
        segnet: tuple[Path, nn.Module], tmp_path: Path) -> None:
    import onnxruntime as ort

    graph, pruned = segnet
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            np.testing.assert_allclose(sess.run(None, {INPUT_NAME: x.numpy()})[0], pruned(x).numpy(), rtol=0, atol=1e-4)
    np.save(tmp_path / "one.npy", np.full((32, 32, 3), 0.5, dtype=np.float32))
    code, stdout, stderr = run_cli(["infer", str(graph), str(tmp_path / "one.npy"), "--out", str(tmp_path / "o")])
    assert code == 0, stderr
    row = stdout.splitlines()[2]
    assert row.split()[:2] == ["one.npy", "semantic"]
    assert f"wrote {tmp_path / 'o' / 'one.semantic.npy'} (labels {tmp_path / 'o' / 'one.semantic.labels.npy'})" in row


def test_an_unwritable_out_dir_is_one_line(segnet: tuple[Path, nn.Module], tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.full((3, 32, 32), 0.5, dtype=np.float32))
    (tmp_path / "taken").write_text("a file, not a folder")
    code, stdout, err = run_cli(["infer", str(segnet[0]), str(tmp_path / "one.npy"), "--out", str(tmp_path / "taken")])
    assert code == 1 and stdout == "" and f"cannot write {tmp_path / 'taken' / 'one.semantic.npy'}" in err
    assert_one_line_error(err)


def test_depth_outputs_are_written_without_label_maps(tmp_path: Path) -> None:
    value = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    entries = write_dense(value, OutputInfo("depth", "depth"), ["a", "b"], tmp_path)
    assert [e["file"] for e in entries] == [str(tmp_path / "a.depth.npy"), str(tmp_path / "b.depth.npy")]
    assert all("labels_file" not in e and e["shape"] == [1, 4, 4] for e in entries)
    np.testing.assert_array_equal(np.load(tmp_path / "b.depth.npy"), value[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.depth.npy", "b.depth.npy"]  # no temporary left


def test_preprocessing_equals_the_training_normalisation() -> None:
    prep = Preprocessing(3, 32, 32, 1 / 255, (0.42, 0.42, 0.42), (0.27, 0.27, 0.27), uint8=True)
    pixels = shapes.generate(2, seed=1).images
    expected = train_normalize(pixels, prep.mean, prep.std).numpy()
    for i in range(2):
        np.testing.assert_allclose(normalize(pixels[i].numpy(), prep), expected[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(normalize(pixels[i].numpy().astype(np.float32) / 255, prep), expected[i], atol=1e-5)


def test_unique_stems_suffix_batches_and_repeated_names() -> None:
    samples = [Sample("a.png", Path("x/a.png"), np.zeros(1)), Sample("a.png", Path("y/a.png"), np.zeros(1)),
               Sample("a.npy[0]", Path("a.npy"), np.zeros(1)), Sample("a.npy[1]", Path("a.npy"), np.zeros(1)),
               Sample("a.npy", Path("z/a.npy"), np.zeros(1))]
    assert unique_stems(samples) == ["a", "a-2", "a-0", "a-1", "a-3"]


# --- errors -------------------------------------------------------------------------------------------

def _bad_inputs(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (file, expected message fragment); the files are written here."""
    pixels = shapes.generate(1, seed=2).images.numpy()
    np.save(root / "small.npy", pixels[:, :, :28, :28])
    Image.fromarray(pixels[0, :, :28, :28].transpose(1, 2, 0)).save(root / "small.png")
    np.save(root / "grey.npy", pixels[0, :1])
    np.save(root / "rgba.npy", np.zeros((32, 32, 4), dtype=np.uint8))
    np.save(root / "int.npy", pixels.astype(np.int64))
    np.save(root / "bright.npy", pixels.astype(np.float32))
    np.save(root / "nan.npy", np.full((3, 32, 32), np.nan, dtype=np.float32))
    np.save(root / "video.npy", pixels[None])
    np.save(root / "empty.npy", pixels[:0])
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "folder.npy").mkdir()
    return {
        "spatial_npy": ("small.npy", "images are 28x28 (HxW), the model expects 32x32"),
        "spatial_png": ("small.png", "image is 28x28 (HxW), the model expects 32x32; drmgf infer does not resize"),
        "channels_chw": ("grey.npy", "1 channel, the model expects 3"),
        "channels_hwc": ("rgba.npy", "4 channels, the model expects 3"),
        "dtype": ("int.npy", "int64 array; expected uint8 pixels 0..255"),
        "range": ("bright.npy", "; expected uint8 pixels 0..255 (or floats in 0..1)"),
        "nan": ("nan.npy", "NaN"),
        "rank": ("video.npy", "array of shape (1, 1, 3, 32, 32); expected one image 3x32x32"),
        "empty": ("empty.npy", "an empty batch (shape (0, 3, 32, 32)); pass at least one image"),
        "corrupt_npy": ("corrupt.npy", "not a readable .npy array"),
        "corrupt_png": ("corrupt.png", "not a readable image"),
        "missing": ("absent.png", "no such file"),
        "directory": ("folder.npy", "not a file"),
    }


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    root = tmp_path_factory.mktemp("bad")
    return root, _bad_inputs(root)


@pytest.mark.parametrize("case", [
    "spatial_npy", "spatial_png", "channels_chw", "channels_hwc", "dtype", "range", "nan", "rank", "empty",
    "corrupt_npy", "corrupt_png", "missing", "directory"])
def test_bad_inputs_exit_1_with_one_line_naming_the_file(export_dir: Path, images: dict[str, Any], tmp_path: Path,
                                                          bad_inputs: tuple[Path, dict[str, tuple[str, str]]],
                                                          case: str) -> None:
    root, cases = bad_inputs
    file, message = cases[case]
    out = tmp_path / "out"
    code, stdout, err = run_cli(["infer", str(export_dir / "exit0.onnx"), str(images["root"] / "chw.npy"),
                                 str(root / file), "--out", str(out)])
    assert code == 1 and stdout == "" and message in err, err
    assert f"{root / file}: " in err
    assert_one_line_error(err)
    assert not out.exists()


def test_model_and_manifest_errors_are_one_line(export_dir: Path, segnet: tuple[Path, nn.Module],
                                                images: dict[str, Any], tmp_path: Path) -> None:
    graph, _ = segnet
    image = str(images["root"] / "chw.npy")
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    (tmp_path / "notes.json").write_text('{"tasks": {}}')
    wide = json.loads((graph.parent / "manifest.json").read_text())
    wide["input"]["preprocessing"]["input_shape"] = [3, 64, 64]
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    for argv, message in (
        ([str(graph), image], "chw.npy: uint8 array, but this model expects float pixels in 0..1"),
        ([str(tmp_path / "broken.onnx"), image, "--manifest", str(export_dir / "manifest.json")],
         "is not a loadable ONNX graph"),
        ([str(tmp_path / "absent.onnx"), image, "--manifest", str(export_dir / "manifest.json")], "no such ONNX file"),
        ([str(tmp_path / "absent.onnx"), image], "absent.onnx: no such ONNX file"),
        ([str(graph), image, "--manifest", str(tmp_path / "notes.json")], "is not an export manifest"),
        ([str(graph), image, "--manifest", str(tmp_path / "nothing.json")], "--manifest"),
        ([str(graph), image, "--manifest", str(tmp_path / "wide.json")], "but the manifest says 3x64x64"),
    ):
        code, stdout, err = run_cli(["infer", *argv])
        assert code == 1 and stdout == "" and message in err, err
        assert_one_line_error(err)


def assert_one_line_error(err: str, command: str = "infer") -> None:
    _one_line_error(err, command)
