"""Pruning per-task graphs (``prune_task``) of residual, multi-exit, multi-head and SegNet models, their ONNX
export (checker, opset, dynamic batch, onnxruntime == PyTorch at batch 1 and 3), and ``drmgf export``
end to end on one tiny run: files, manifest, Triton layout, atomic replacement and one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from drmgf.config import TrainConfig
from drmgf.data import shapes
from drmgf.errors import ConfigError, UserError
from drmgf.export import exporter
from drmgf.export.exporter import SCHEMA, export_run, prepare, sample_inputs
from drmgf.export.files import MARKER, staged_directory
from drmgf.export.groups import channel_groups
from drmgf.export.onnx_io import INPUT_NAME, MIN_OPSET, export_onnx
from drmgf.export.prune import prune_task, union_routes
from drmgf.export.routes import RouteRule, keep_top
from drmgf.export.routes_run import routes_for_run
from drmgf.export.tasknet import TaskNet, copy_with_names, task_nets
from drmgf.methods.routing import slice_norm
from drmgf.methods.sharing import probe_sharing
from drmgf.models import build_model
from drmgf.tasks import TaskSpec
from drmgf.train import fit
from tests.helpers import assert_one_line_error as _one_line_error
from tests.helpers import run_cli

DENSE_TASKS = (TaskSpec("semantic", "segmentation", 6), TaskSpec("depth", "depth"))


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics of ``x``, so that outputs are O(1), not ~1e-8."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def model_and_nets(name: str, tasks: tuple[TaskSpec, ...],
                   width: int) -> tuple[nn.Module, dict[str, TaskNet], torch.Tensor]:
    """A seeded, calibrated model, its task networks and an input batch [3, 3, 32, 32]."""
    torch.manual_seed(0)
    model = build_model(name, tasks, 3, width=width)
    x = torch.randn(3, 3, 32, 32)
    calibrated(model, torch.randn(8, 3, 32, 32))
    return model, task_nets(model, probe_sharing(model, [t.name for t in model.tasks], x[:2])), x


def half_route(model: nn.Module, net: TaskNet, x: torch.Tensor) -> dict[str, list[int]]:
    """The top half of each route layer's filters by L2 norm, made consistent within channel groups."""
    params = dict(model.named_parameters())
    chosen = {layer: keep_top(slice_norm(params[f"{layer}.weight"].detach()).norm(dim=1), 0.5)
              for layer in net.route_layers}
    module, names = copy_with_names(net)
    return union_routes(channel_groups(module, x[:1], names, net.couplings), chosen)


def pruned_convs(net: TaskNet, pruned: nn.Module) -> dict[str, nn.Conv2d]:
    """Full-model name -> conv of the pruned copy (same module structure as ``net.module``)."""
    pairs = zip(net.module.named_modules(remove_duplicate=False), pruned.named_modules(remove_duplicate=False))
    return {net.names[id(orig)]: new for (_, orig), (_, new) in pairs if id(orig) in net.names}


def check_exact_channels(model: nn.Module, net: TaskNet, pruned: nn.Module, kept: dict[str, list[int]]) -> None:
    """Route convs keep exactly ``kept`` filters (their very weights); other convs keep all of theirs."""
    convs = pruned_convs(net, pruned)
    original = dict(model.named_modules())
    for name, conv in convs.items():
        expected = len(kept[name]) if name in kept else original[name].out_channels
        assert conv.out_channels == expected == conv.weight.shape[0], name
    first = net.route_layers[0]  # reads the image: its input channels are all kept
    torch.testing.assert_close(convs[first].weight, original[first].weight[kept[first]], rtol=0, atol=0)


def test_prune_resnet_sdn_exit_keeps_exactly_the_route_and_runs() -> None:
    model, nets, x = model_and_nets("resnet_sdn", (shapes.TASKS[0],), 4)
    net = nets["exit1"]
    assert net.route_layers == ["stem.0", "blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "blocks.1.conv2",
                                "blocks.1.shortcut.0"]
    kept = half_route(model, net, x)
    assert kept["stem.0"] == kept["blocks.0.conv2"] and kept["blocks.1.conv2"] == kept["blocks.1.shortcut.0"]
    assert len(kept["blocks.0.conv1"]) == 2 and len(kept["blocks.1.conv1"]) == 4
    pruned = prune_task(net, kept, x[:1])
    check_exact_channels(model, net, pruned, kept)
    conv1 = pruned_convs(net, pruned)["blocks.0.conv1"]  # its inputs are the kept stem channels
    torch.testing.assert_close(conv1.weight, model.blocks[0].conv1.weight[kept["blocks.0.conv1"]][:, kept["stem.0"]])
    assert pruned_convs(net, pruned)["exits.1.features.0"].out_channels == 8  # the exit's own conv is untouched
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (3, 6) and torch.isfinite(y).all()
    assert all(not p.requires_grad for p in pruned.parameters()) and not pruned.training
    assert model.stem[0].out_channels == 4 and net.module.blocks[1].conv2.out_channels == 8  # original untouched


@pytest.mark.parametrize(("name", "tasks", "width", "task"), [
    ("resnet_sdn", (shapes.TASKS[0],), 4, "exit1"), ("mt_resnet", shapes.TASKS, 4, "color"),
    ("segnet_mtan", DENSE_TASKS, 2, "semantic"),
])
def test_a_route_keeping_everything_reproduces_the_dense_output(name: str, tasks: tuple[TaskSpec, ...], width: int,
                                                                task: str) -> None:
    model, nets, x = model_and_nets(name, tasks, width)
    net = nets[task]
    everything = {layer: list(range(dict(model.named_modules())[layer].out_channels)) for layer in net.route_layers}
    pruned = prune_task(net, everything, x[:1])
    with torch.no_grad():
        dense, same = net.module.eval()(x), pruned(x)
    assert dense.abs().max() > 0.1  # calibrated: a real signal, not a vanishing one
    torch.testing.assert_close(same, dense, rtol=1e-5, atol=1e-5)


def test_prune_mt_resnet_task_graph_and_onnx_matches_it_at_batch_1_and_3(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    model, nets, x = model_and_nets("mt_resnet", shapes.TASKS, 4)
    net = nets["size"]
    assert net.route_layers == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # the whole trunk
    kept = half_route(model, net, x)
    pruned = prune_task(net, kept, x[:1])
    check_exact_channels(model, net, pruned, kept)
    path = tmp_path / "size.onnx"
    export_onnx(pruned, x[:2], path, ["size"], 18)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
    assert graph.graph.input[0].name == INPUT_NAME and graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in graph.graph.output] == ["size"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x):
        with torch.no_grad():
            expected = pruned(batch).numpy()
        got = sess.run(None, {INPUT_NAME: batch.numpy()})[0]
        assert got.shape == (batch.shape[0], 3)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name != "size.onnx"]  # single file, no temporary left


def test_prune_segnet_keeps_pool_index_couplings_consistent_and_runs() -> None:
    model, nets, x = model_and_nets("segnet_mtan", DENSE_TASKS, 2)
    net = nets["semantic"]
    pairs = [(a, b) for a, b in net.couplings]
    assert len(pairs) == 4  # the deepest unpooling uses the indices of the conv that feeds it
    module, names = copy_with_names(net)
    blind = channel_groups(module, x[:1], names)  # what autograd alone sees
    linked = channel_groups(module, x[:1], names, net.couplings)
    for a, b in pairs:
        assert not any(a in g.members and b in g.members for g in blind)
        assert any(a in g.members and b in g.members for g in linked)
    kept = half_route(model, net, x)
    for a, b in pairs:
        if a in kept and b in kept:
            assert kept[a] == kept[b], (a, b)
    pruned = prune_task(net, kept, x[:1])
    check_exact_channels(model, net, pruned, kept)
    shrunk = [n for n in kept if len(kept[n]) < dict(model.named_modules())[n].out_channels]
    assert len(shrunk) >= 10  # the route really removes filters
    with torch.no_grad():
        y = pruned(x[:2])
    assert y.shape == (2, 6, 32, 32) and torch.isfinite(y).all()


# --- drmgf export end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., TrainConfig]) -> dict[str, Any]:
    """A 1-epoch DR-MGF resnet_sdn run with 2 exits (after blocks 1 and 2), routed keep-ratio 0.5, then one
    ``drmgf export --triton`` in-process. Its routes file is hand-edited before the export: exit0 keeps a
    single stem filter, splitting the stem's residual group (the export must keep the group's union)."""
    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    fit(tiny_config(run, data={"limit_train": 64, "limit_test": 32}, model={"exit_every": 2},
                    method={"method": "drmgf", "period_steps": 2}))
    routes = routes_for_run(run, RouteRule(rule="keep-ratio", keep_ratio=0.5), plot=False)
    edited = json.loads(json.dumps(routes))
    edited["tasks"]["exit0"]["layers"]["stem.0"]["kept"] = routes["tasks"]["exit0"]["layers"]["stem.0"]["kept"][:1]
    (run / "routes.json").write_text(json.dumps(edited))
    code, stdout, stderr = run_cli(["export", str(run), "--triton", str(root / "triton")])
    assert code == 0, stderr
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    return {"run": run, "triton": root / "triton", "stdout": stdout, "stderr": stderr, "routes": routes,
            "manifest": manifest}


def files_under(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_exactly_the_graphs_and_the_manifest(exported: dict[str, Any]) -> None:
    export = exported["run"] / "export"
    assert files_under(export) == {MARKER, "manifest.json", "full.onnx", "exit0.onnx", "exit1.onnx",
                                   "dense/exit0.onnx", "dense/exit1.onnx"}
    assert not [p for p in exported["run"].iterdir() if p.name.startswith(".export")]  # no stage left behind
    assert "exporting exit1 (pruned)" in exported["stderr"]


def test_manifest_schema_hashes_costs_parity_and_preprocessing(exported: dict[str, Any]) -> None:
    m, run = exported["manifest"], exported["run"]
    export = run / "export"
    assert m["schema"] == SCHEMA and m["run"] == str(run) and m["epoch"] == 1 and m["method"] == "drmgf"
    assert m["opset"] >= MIN_OPSET and {"torch", "onnx", "onnxruntime", "torch-pruning"} <= set(m["versions"])
    assert m["input"] == {"name": INPUT_NAME, "shape": [3, 32, 32], "dynamic_batch": True, "preprocessing": {
        "layout": "NCHW", "dtype": "float32", "input_shape": [3, 32, 32], "scale": pytest.approx(1 / 255),
        "mean": [0.42, 0.42, 0.42], "std": [0.27, 0.27, 0.27], "pixel_range": "0..255 uint8"}}
    assert m["routes"]["sha256"] == sha(run / "routes.json") and m["routes"]["rule"]["rule"] == "keep-ratio"
    assert m["full"]["outputs"] == ["exit0", "exit1"] and m["full"]["sha256"] == sha(export / "full.onnx")
    assert m["full"]["parity_max_abs"] < 1e-4 and m["triton"] == str(exported["triton"])
    assert list(m["tasks"]) == ["exit0", "exit1"]
    for task, e in m["tasks"].items():
        assert e["output"] == task and e["kind"] == "classification" and e["num_classes"] == 6
        assert e["target"] == "shape" and e["class_names"] == list(shapes.SHAPES) and e["output_shape"] == [6]
        assert e["pruned"]["file"] == f"{task}.onnx" and e["dense"]["file"] == f"dense/{task}.onnx"
        for which in ("dense", "pruned"):
            assert e[which]["sha256"] == sha(export / e[which]["file"])
            assert 0 <= e[which]["parity_max_abs"] < 1e-4 and e[which]["macs"] > 0 and e[which]["params"] > 0
        assert e["pruned"]["macs"] < e["dense"]["macs"] and e["pruned"]["params"] < e["dense"]["params"]
        assert set(e["metrics_test"]) == {"dense", "pruned"} and 0 <= e["metrics_test"]["pruned"]["top1"] <= 1
        assert e["finetune_epochs"] == 0
        for layer, kept in e["kept_channels"].items():
            filters = exported["routes"]["tasks"][task]["layers"][layer]["filters"]
            assert e["kept_counts"][layer] == f"{len(kept)}/{filters}"


def test_manifest_kept_channels_are_the_routes_with_split_groups_reunited(exported: dict[str, Any]) -> None:
    routes = exported["routes"]["tasks"]
    kept = {t: e["kept_channels"] for t, e in exported["manifest"]["tasks"].items()}
    for task in ("exit0", "exit1"):
        assert kept[task] == {layer: e["kept"] for layer, e in routes[task]["layers"].items()}
    assert kept["exit0"]["stem.0"] == kept["exit0"]["blocks.0.conv2"]  # not the hand-edited single filter


def test_onnxruntime_equals_pytorch_at_batch_1_and_3(exported: dict[str, Any]) -> None:
    import onnx
    import onnxruntime as ort

    run_obj, _, nets = prepare(exported["run"], None, "checkpoint.pt")
    export, m = exported["run"] / "export", exported["manifest"]
    batches = [sample_inputs(run_obj, 1), sample_inputs(run_obj, 3)]
    modules = {"full.onnx": lambda x: tuple(run_obj.model.eval()(x)[t] for t in m["full"]["outputs"])}
    for task, e in m["tasks"].items():
        modules[e["dense"]["file"]] = nets[task].module.eval()
        modules[e["pruned"]["file"]] = prune_task(nets[task], e["kept_channels"], batches[0])
    for file, module in modules.items():
        graph = onnx.load(str(export / file))
        onnx.checker.check_model(graph)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param, file
        assert not graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value
        sess = ort.InferenceSession(str(export / file), providers=["CPUExecutionProvider"])
        for x in batches:
            with torch.no_grad():
                expected = module(x)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = sess.run(None, {INPUT_NAME: x.numpy()})
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert g.shape == (x.shape[0], 6)
                np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-4)


def test_triton_repository_layout(exported: dict[str, Any]) -> None:
    repo, export = exported["triton"], exported["run"] / "export"
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["exit0", "exit1", "full"]
    for name, source, outputs in (("full", "full.onnx", ["exit0", "exit1"]), ("exit0", "exit0.onnx", ["exit0"]),
                                  ("exit1", "exit1.onnx", ["exit1"])):
        assert files_under(repo / name) == {"config.pbtxt", "1/model.onnx"}
        assert (repo / name / "1" / "model.onnx").read_bytes() == (export / source).read_bytes()
        config = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and 'platform: "onnxruntime_onnx"' in config
        assert "max_batch_size: 64" in config and "dynamic_batching {" in config
        assert f'{{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] }}' in config
        for out in outputs:
            assert f'{{ name: "{out}" data_type: TYPE_FP32 dims: [ 6 ] }}' in config
        assert config.count("TYPE_FP32") == 1 + len(outputs)


def test_cli_export_prints_one_row_per_task(exported: dict[str, Any]) -> None:
    lines = exported["stdout"].splitlines()
    assert lines[0].split()[:3] == ["task", "MACs", "dense"] and "max |ORT-torch|" in lines[0]
    m = exported["manifest"]
    for task, e in m["tasks"].items():
        row = next(line for line in lines if line.startswith(task))
        assert str(e["dense"]["macs"]) in row and str(e["pruned"]["macs"]) in row
        assert f"{e['pruned']['macs'] / e['dense']['macs']:.1%}" in row
    assert lines[-1] == f"exported to {exported['run']}/export (full.onnx, one graph per task, dense/, manifest.json)"


@pytest.fixture
def run_copy(exported: dict[str, Any], tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(exported["run"], copy)
    return copy


def _bad_routes(routes: dict[str, Any], how: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(routes))
    layer = doc["tasks"]["exit1"]["layers"]["blocks.1.conv1"]
    if how == "out_of_range":
        layer["kept"] = layer["kept"] + [layer["filters"]]
    elif how == "other_width":  # a routes file of a wider run: in range for its filters, not for this conv
        layer["filters"], layer["kept"] = 16, [12, 13]
    elif how == "unsorted":
        layer["kept"] = layer["kept"][::-1]
    elif how == "missing_task":
        del doc["tasks"]["exit1"]
    elif how == "schema":
        doc["schema"] = "drmgf.routes/0"
    return doc


@pytest.mark.parametrize(("how", "message"), [
    ("out_of_range", "blocks.1.conv1' of task 'exit1' must keep sorted unique filters in [0, 8)"),
    ("other_width", "conv with 8 filters, got filters=16"), ("unsorted", "sorted unique"),
    ("missing_task", "no route for task 'exit1'"), ("schema", "schema 'drmgf.routes/0'"),
])
def test_a_bad_routes_file_fails_in_one_line_and_leaves_the_export_untouched(
        run_copy: Path, exported: dict[str, Any], file_digests: Callable[[Path], dict[str, str]], how: str,
        message: str) -> None:
    before = file_digests(run_copy / "export")
    bad = run_copy / "bad.json"
    bad.write_text(json.dumps(_bad_routes(exported["routes"], how)))
    code, stdout, err = run_cli(["export", str(run_copy), "--routes", str(bad), "-q"])
    assert code == 2 and message in err and stdout == ""
    assert_one_line_error(err)
    with pytest.raises(ConfigError, match="recreate it with `drmgf routes`"):
        export_run(run_copy, routes_path=bad)
    assert file_digests(run_copy / "export") == before


def test_a_failure_inside_the_export_keeps_the_previous_export(run_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                              file_digests: Callable[[Path], dict[str, str]]) -> None:
    before = file_digests(run_copy / "export")

    def broken(run: object, stage: Path, opset: int) -> dict[str, Any]:
        (stage / "full.onnx").write_bytes(b"half a graph")
        raise UserError("full.onnx: onnxruntime differs from PyTorch (simulated)")

    monkeypatch.setattr(exporter, "export_full", broken)
    with pytest.raises(UserError, match="simulated"):
        export_run(run_copy, triton_dir=run_copy / "triton")
    assert file_digests(run_copy / "export") == before
    assert sorted(p.name for p in run_copy.iterdir() if p.name.startswith(".")) == []
    assert not (run_copy / "triton").exists()


def test_staged_directory_swaps_in_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "export"
    with staged_directory(target) as stage:
        (stage / "old.onnx").write_text("old")
    assert files_under(target) == {MARKER, "old.onnx"}
    with pytest.raises(RuntimeError), staged_directory(target) as stage:
        (stage / "new.onnx").write_text("new")
        raise RuntimeError("export failed half way")
    assert files_under(target) == {MARKER, "old.onnx"}
    with staged_directory(target) as stage:
        (stage / "new.onnx").write_text("new")
    assert files_under(target) == {MARKER, "new.onnx"}  # replaced as a whole: old.onnx is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no stage or old copy left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for taken in (tmp_path / "mine", tmp_path / "file"):
        with pytest.raises(UserError, match="was not written by drmgf; choose another directory"):
            with staged_directory(taken):
                pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and (tmp_path / "file").read_text() == "keep"


def test_export_usage_errors_are_one_line(run_copy: Path, tmp_path: Path) -> None:
    for argv, code, message in (
        (["--routes", str(tmp_path / "none.json")], 1, "no routes at"),
        (["--opset", "17"], 2, "--opset must be 18 or newer"),
        (["--tasks", "exit0,exit9"], 1, "--tasks: ['exit9'] are not tasks of"),
        (["--finetune-epochs", "-1"], 1, "--finetune-epochs must be >= 0"),
    ):
        got, _, err = run_cli(["export", str(run_copy), *argv])
        assert got == code and message in err, err
        assert_one_line_error(err)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("not drmgf's")
    got, _, err = run_cli(["export", str(run_copy), "--triton", str(tmp_path / "other"), "-q"])
    assert got == 1 and "was not written by drmgf" in err
    assert (tmp_path / "other" / "mine.txt").read_text() == "not drmgf's"


def assert_one_line_error(err: str, command: str = "export") -> None:
    _one_line_error(err, command)
