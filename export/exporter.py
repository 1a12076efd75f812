"""``drmgf export``: full.onnx, one pruned graph per task (plus its dense twin), manifest.json."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drmgf.data.base import normalize
from drmgf.errors import UserError
from drmgf.methods.sharing import probe_sharing
from drmgf.train.loop import Run, load_run
from drmgf.utils import atomic_write_json, package_versions
from drmgf.export import triton
from drmgf.export.files import check_replaceable, sha256, staged_directory
from drmgf.export.finetune import finetune, task_metrics
from drmgf.export.groups import channel_groups
from drmgf.export.onnx_io import INPUT_NAME, PARITY_TOLERANCE, TupleOutputs, check_opset, export_onnx, parity
from drmgf.export.prune import prune_task, union_routes
from drmgf.export.routes import read_routes
from drmgf.export.tasknet import TaskNet, copy_with_names, count_macs_params, task_nets

log = logging.getLogger(__name__)
SCHEMA = "drmgf.export/1"
Say = Callable[[str], None]


def sample_inputs(run: Run, n: int) -> torch.Tensor:
    """The first ``n`` test images, preprocessed: real inputs for tracing and parity."""
    return normalize(run.data.test.images[:n], run.data.mean, run.data.std)


def prepare(run_dir: Path, tasks: list[str] | None, checkpoint: str) -> tuple[Run, dict[str, Any], dict[str, TaskNet]]:
    """Load a run and the deployable network of each requested task."""
    run, ckpt = load_run(run_dir, checkpoint=checkpoint)
    sharing = probe_sharing(run.model, [t.name for t in run.tasks], sample_inputs(run, 2))
    nets = task_nets(run.model, sharing)
    if tasks:
        unknown = [t for t in tasks if t not in nets]
        if unknown:
            raise UserError(f"--tasks: {unknown} are not tasks of {run_dir} ({', '.join(nets)})")
        nets = {t: nets[t] for t in tasks}
    return run, ckpt, nets


def load_routes_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no routes at {path}; run `drmgf routes {path.parent}` first or pass --routes FILE")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); recreate it "
                        "with `drmgf routes`") from None


def _check_parity(path: Path, module: nn.Module, inputs: list[torch.Tensor]) -> float:
    err = parity(path, module, inputs)
    if not err <= PARITY_TOLERANCE:
        raise UserError(f"{path.name}: onnxruntime differs from PyTorch by {err:.3g} (> {PARITY_TOLERANCE}); "
                        "the graph was not kept")
    return err


def output_dims(module: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return list(module(x).shape[1:])


def export_task(run: Run, net: TaskNet, kept: dict[str, list[int]], stage: Path, opset: int,
                finetune_epochs: int, say: Say) -> dict[str, Any]:
    """Dense and pruned graphs of one task, checked against PyTorch; its manifest entry."""
    spec = next(t for t in run.tasks if t.name == net.task)
    one, two = sample_inputs(run, 1), sample_inputs(run, 2)
    checks = [sample_inputs(run, 1), sample_inputs(run, 3)]
    dense = net.module.eval()
    module, names = copy_with_names(net)  # a hand-edited routes file may split a group: record what is really kept
    kept = union_routes(channel_groups(module, one, names, net.couplings), kept)
    pruned = prune_task(net, kept, one)
    metrics = {"dense": task_metrics(dense, spec, run.data.test, run), "pruned": task_metrics(pruned, spec, run.data.test, run)}
    if finetune_epochs:
        say(f"fine-tuning {net.task} for {finetune_epochs} epoch(s)")
        finetune(pruned, spec, run, finetune_epochs)
        metrics["pruned_finetuned"] = task_metrics(pruned, spec, run.data.test, run)
    (stage / "dense").mkdir(exist_ok=True)
    files = {"dense": stage / "dense" / f"{net.task}.onnx", "pruned": stage / f"{net.task}.onnx"}
    entry: dict[str, Any] = {"output": net.task, "kind": spec.kind, "num_classes": spec.num_classes,
                             "target": spec.target, "class_names": run.data.class_names.get(spec.target, []),
                             "output_shape": output_dims(pruned, one), "finetune_epochs": finetune_epochs}
    for which, module in (("dense", dense), ("pruned", pruned)):
        say(f"exporting {net.task} ({which})")
        export_onnx(module, two, files[which], [net.task], opset)
        macs, params = count_macs_params(module, one)
        entry[which] = {"file": str(files[which].relative_to(stage)), "sha256": sha256(files[which]), "macs": macs,
                        "params": params, "parity_max_abs": _check_parity(files[which], module, checks)}
    entry["kept_channels"] = kept
    entry["kept_counts"] = {layer: f"{len(k)}/{net_filters(net, layer)}" for layer, k in kept.items()}
    entry["metrics_test"] = metrics
    return entry


def net_filters(net: TaskNet, layer: str) -> int:
    for module in net.module.modules():
        if net.names.get(id(module)) == layer:
            return int(module.out_channels)  # type: ignore[union-attr]
    raise KeyError(layer)


def export_full(run: Run, stage: Path, opset: int) -> dict[str, Any]:
    """The unpruned multi-output graph."""
    names = [t.name for t in run.tasks]
    module = TupleOutputs(run.model.eval(), names)
    path = stage / "full.onnx"
    export_onnx(module, sample_inputs(run, 2), path, names, opset)
    macs, params = count_macs_params(module, sample_inputs(run, 1))
    err = _check_parity(path, module, [sample_inputs(run, 1), sample_inputs(run, 3)])
    return {"file": "full.onnx", "sha256": sha256(path), "outputs": names, "macs": macs, "params": params,
            "parity_max_abs": err}


def write_triton(manifest: dict[str, Any], stage: Path, repo_dir: Path) -> None:
    """A Triton model repository with the full graph and every pruned task graph."""
    input_dims = manifest["input"]["shape"]
    with staged_directory(repo_dir) as repo:
        full_outputs = {t: manifest["tasks"][t]["output_shape"] for t in manifest["full"]["outputs"] if t in manifest["tasks"]}
        if len(full_outputs) == len(manifest["full"]["outputs"]):
            triton.write_model(repo, "full", stage / "full.onnx", triton.model_config("full", INPUT_NAME, input_dims, full_outputs))
        for task, entry in manifest["tasks"].items():
            config = triton.model_config(task, INPUT_NAME, input_dims, {task: entry["output_shape"]})
            triton.write_model(repo, task, stage / entry["pruned"]["file"], config)


def export_run(run_dir: str | Path, *, routes_path: str | Path | None = None, tasks: list[str] | None = None,
               finetune_epochs: int = 0, opset: int = 18, triton_dir: str | Path | None = None,
               checkpoint: str = "checkpoint.pt", say: Say = lambda _: None) -> dict[str, Any]:
    """Export a trained run to ``RUN_DIR/export/`` (replaced as a whole, only on success).

    Returns:
        The manifest.
    """
    check_opset(opset)
    if finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    run_dir = Path(run_dir)
    if triton_dir:
        check_replaceable(Path(triton_dir))  # fail before minutes of exporting, not after
    routes_file = Path(routes_path) if routes_path else run_dir / "routes.json"
    document = load_routes_file(routes_file)
    run, ckpt, nets = prepare(run_dir, tasks, checkpoint)
    kept = read_routes(document, nets)
    with staged_directory(run_dir / "export") as stage:
        say("exporting full.onnx")
        manifest: dict[str, Any] = {
            "schema": SCHEMA, "run": str(run_dir), "epoch": int(ckpt["epoch"]), "method": ckpt["config"]["method"]["method"],
            "opset": opset, "versions": package_versions(),
            "input": {"name": INPUT_NAME, "shape": list(run.data.input_shape), "dynamic_batch": True,
                      "preprocessing": run.data.preprocessing()},
            "routes": {"file": str(routes_file), "sha256": sha256(routes_file), "rule": document.get("rule")},
            "full": export_full(run, stage, opset), "tasks": {},
        }
        for task, net in nets.items():
            manifest["tasks"][task] = export_task(run, net, kept[task], stage, opset, finetune_epochs, say)
        if triton_dir:
            say(f"writing the Triton repository {triton_dir}")
            write_triton(manifest, stage, Path(triton_dir))
            manifest["triton"] = str(triton_dir)
        atomic_write_json(stage / "manifest.json", manifest)
    return manifest
