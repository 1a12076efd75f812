"""``drmgf bench``: onnxruntime latency, throughput and accuracy of the exported graphs.

For every task three graphs are compared: the full multi-output graph (``full.onnx``), the task's
unpruned graph (``dense/<task>.onnx``) and its pruned graph (``<task>.onnx``). Per setting (batch
size, intra-op threads) all graphs run interleaved, round-robin with a rotating start, so that
background load hits them alike; the full graph is measured once per setting and shared by the
tasks. Accuracy is measured through onnxruntime, i.e. it is the accuracy of the deployed files.

The project's target (``efficiency``): for a pruned graph that keeps at most half of its dense
MACs, (dense/pruned speedup at batch 32 with one thread) / (dense/pruned MACs) must be >= 0.85.

This module measures and writes files; it never prints.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drmgf.data.base import Split, iterate, normalize
from drmgf.errors import ConfigError, UserError
from drmgf.metrics import TaskMeter
from drmgf.tasks import TaskSpec
from drmgf.utils import atomic_write_json, atomic_write_text
from drmgf.export.hardware import channel_block, cpu_facts
from drmgf.export.files import sha256
from drmgf.export.onnx_io import INPUT_NAME, session

log = logging.getLogger(__name__)
SCHEMA = "drmgf.bench/1"
GRAPH_KINDS = ("full", "dense", "pruned")
REFERENCE = (32, 1)  # (batch, threads) at which the efficiency target is defined
TARGET_EFFICIENCY = 0.85
TARGET_MAX_KEPT = 0.5  # the target applies to pruned graphs keeping at most this share of dense MACs
PRIMARY_METRIC = {"classification": "top1", "segmentation": "miou", "depth": "abs_err", "normal": "mean"}
SPLITS = ("test", "val")
Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What to measure (flags of ``drmgf bench``).

    Attributes:
        batches: batch sizes.
        threads: onnxruntime intra-op thread counts.
        split: ``test`` or ``val``: images for the inputs and the accuracy.
        min_runs: timed runs per graph and setting, at least.
        min_time_s: seconds of timed round-robin per setting, at least (stops early at ``max_runs``).
        max_runs: cap on the timed runs per graph and setting (ignored below ``min_runs``).
        warmup: untimed runs per graph before timing each setting.
        limit: accuracy on the first N images of the split only (None: all).
        eval_batch: batch size of the accuracy pass.
    """

    batches: tuple[int, ...] = (1, 32)
    threads: tuple[int, ...] = (1, 2)
    split: str = "test"
    min_runs: int = 20
    min_time_s: float = 1.0
    max_runs: int = 2000
    warmup: int = 5
    limit: int | None = None
    eval_batch: int = 64

    def validate(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"--batch needs positive batch sizes, got {list(self.batches)}")
        if not self.threads or min(self.threads) < 1:
            raise ConfigError(f"--threads needs positive thread counts, got {list(self.threads)}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be test or val, got {self.split!r}")
        if self.min_runs < 1:
            raise ConfigError(f"--runs must be >= 1, got {self.min_runs}")
        if not self.min_time_s >= 0:
            raise ConfigError(f"--min-time must be >= 0 seconds, got {self.min_time_s}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.warmup < 0 or self.eval_batch < 1:
            raise ConfigError(f"warm-up runs must be >= 0 and the accuracy batch >= 1, got {self.warmup}, {self.eval_batch}")


@dataclass(frozen=True)
class Graph:
    """One ONNX file of the export, as the manifest describes it."""

    key: str  # "full" or "<task>/<kind>"
    kind: str  # full | dense | pruned
    task: str | None
    path: Path
    file: str  # relative to RUN_DIR/export/
    macs: int
    params: int


# --- the export ---------------------------------------------------------------------------------

def read_manifest(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/export/manifest.json``; a missing or unreadable export is a UserError."""
    path = run_dir / "export" / "manifest.json"
    if not path.is_file():
        raise UserError(f"no export in {run_dir} (no export/manifest.json); run `drmgf export {run_dir}` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; run `drmgf export {run_dir}` again") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != "drmgf.export/1":
        raise UserError(f"{path} is not a drmgf.export/1 manifest; run `drmgf export {run_dir}` again")
    return manifest


def manifest_graphs(manifest: dict[str, Any], export_dir: Path) -> list[Graph]:
    """Every graph of the manifest (full first, then dense and pruned per task)."""
    full = manifest["full"]
    graphs = [Graph("full", "full", None, export_dir / full["file"], full["file"], int(full["macs"]), int(full["params"]))]
    for task, entry in manifest["tasks"].items():
        for kind in ("dense", "pruned"):
            e = entry[kind]
            graphs.append(Graph(f"{task}/{kind}", kind, task, export_dir / e["file"], e["file"], int(e["macs"]),
                                int(e["params"])))
    return graphs


def verify_graphs(manifest: dict[str, Any], export_dir: Path) -> None:
    """Every graph exists and has the sha256 the manifest recorded (else the files changed after export)."""
    entries = [manifest["full"]] + [e[k] for e in manifest["tasks"].values() for k in ("dense", "pruned")]
    for entry in entries:
        path = export_dir / entry["file"]
        if not path.is_file():
            raise UserError(f"{path} is missing; run `drmgf export {export_dir.parent}` again")
        if sha256(path) != entry["sha256"]:
            raise UserError(f"{path} does not match the sha256 in manifest.json (the file changed after export); "
                            f"run `drmgf export {export_dir.parent}` again")


def task_specs(manifest: dict[str, Any]) -> dict[str, TaskSpec]:
    """Output name -> TaskSpec, from the manifest."""
    return {task: TaskSpec(name=task, kind=e["kind"], num_classes=int(e["num_classes"]), target=e["target"])
            for task, e in manifest["tasks"].items()}


def load_split(run_dir: Path, name: str) -> Split:
    """The run's ``test`` or ``val`` split, regenerated/loaded from its config.json."""
    from drmgf.config import TrainConfig
    from drmgf.data import load_dataset

    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a drmgf run directory (no config.json); pass the --out of `drmgf train`")
    cfg = TrainConfig.from_dict(json.loads(config_path.read_text())["config"])
    split = getattr(load_dataset(cfg.data), name)
    if len(split) == 0:
        raise UserError(f"the {name} split of {run_dir} is empty; use --split test")
    return split


# --- timing -------------------------------------------------------------------------------------

def round_robin(runners: dict[str, Callable[[], object]], *, min_runs: int, min_time_s: float, max_runs: int,
                warmup: int) -> dict[str, list[float]]:
    """Time callables interleaved: each round calls every runner once, starting one later each round.

    Runs until every runner has ``min_runs`` timings and ``min_time_s`` seconds have passed (capped at
    ``max_runs``, never below ``min_runs``).

    Returns:
        key -> per-call wall times in milliseconds.
    """
    keys = list(runners)
    for key in keys:
        for _ in range(warmup):
            runners[key]()
    times: dict[str, list[float]] = {k: [] for k in keys}
    cap, start, rounds = max(max_runs, min_runs), time.perf_counter(), 0
    while rounds < min_runs or (rounds < cap and time.perf_counter() - start < min_time_s):
        shift = rounds % len(keys)
        for key in keys[shift:] + keys[:shift]:
            t0 = time.perf_counter_ns()
            runners[key]()
            times[key].append((time.perf_counter_ns() - t0) / 1e6)
        rounds += 1
    return times


def latency_stats(ms: list[float], batch: int) -> dict[str, float]:
    """Median, p90, mean and min in milliseconds, the run count, and throughput at the median (images/s)."""
    a = np.asarray(ms, dtype=np.float64)
    median = float(np.median(a))
    return {"median_ms": median, "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "runs": int(a.size), "images_per_s": batch * 1000.0 / median}


def fill_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images, repeating the given ones in order. images: [N, C, H, W] -> [batch, C, H, W]."""
    return np.ascontiguousarray(np.take(images, np.arange(batch) % images.shape[0], axis=0))


def settings(opts: BenchOptions) -> list[tuple[int, int, bool]]:
    """(batch, threads, requested) in measuring order; the reference setting is added if not requested."""
    chosen = [(b, t, True) for t in dict.fromkeys(opts.threads) for b in dict.fromkeys(opts.batches)]
    if REFERENCE not in [(b, t) for b, t, _ in chosen]:
        chosen.append((*REFERENCE, False))
    return chosen


def measure_latency(graphs: list[Graph], images: np.ndarray, opts: BenchOptions,
                    say: Say) -> list[dict[str, Any]]:
    """Latency of every graph at every setting: [{batch, threads, requested, latency: {key: stats}}]."""
    results, sessions, session_threads = [], {}, None
    for batch, threads, requested in settings(opts):
        if threads != session_threads:
            sessions = {g.key: session(g.path, threads) for g in graphs}
            session_threads = threads
        say(f"timing batch {batch}, {threads} thread(s){'' if requested else ' (reference for the efficiency)'}")
        x = fill_batch(images, batch)
        runners = {k: _runner(s, x) for k, s in sessions.items()}
        times = round_robin(runners, min_runs=opts.min_runs, min_time_s=opts.min_time_s, max_runs=opts.max_runs,
                            warmup=opts.warmup)
        results.append({"batch": batch, "threads": threads, "requested": requested,
                        "latency": {k: latency_stats(v, batch) for k, v in times.items()}})
    return results


def _runner(sess: Any, x: np.ndarray) -> Callable[[], object]:
    feed = {INPUT_NAME: x}
    return lambda: sess.run(None, feed)


# --- accuracy -----------------------------------------------------------------------------------

def graph_metrics(sess: Any, outputs: dict[str, TaskSpec], split: Split, mean: list[float], std: list[float],
                  batch: int) -> dict[str, dict[str, float]]:
    """Metrics of the named outputs of one onnxruntime session on ``split`` (TaskMeter per output)."""
    names = list(outputs)
    meters = {n: TaskMeter(outputs[n]) for n in names}
    for images, targets in iterate(split, batch):
        x = normalize(images, tuple(mean), tuple(std)).numpy()
        for name, out in zip(names, sess.run(names, {INPUT_NAME: x})):
            meters[name].update(torch.from_numpy(out), targets[outputs[name].target])
    return {n: m.compute() for n, m in meters.items()}


def measure_accuracy(graphs: list[Graph], specs: dict[str, TaskSpec], split: Split, manifest: dict[str, Any],
                     opts: BenchOptions, say: Say) -> dict[str, dict[str, dict[str, float]]]:
    """key ("full" or "<task>/<kind>") -> output name -> metrics, through onnxruntime."""
    pre = manifest["input"]["preprocessing"]
    threads = max(opts.threads)
    result = {}
    for g in graphs:
        say(f"accuracy of {g.key} on {len(split)} {opts.split} images")
        outputs = specs if g.kind == "full" else {g.task: specs[g.task]}  # type: ignore[dict-item]
        result[g.key] = graph_metrics(session(g.path, threads), outputs, split, pre["mean"], pre["std"], opts.eval_batch)
    return result


# --- the numbers ------------------------------------------------------------------------------

def efficiency(dense_ms: float, pruned_ms: float, dense_macs: int, pruned_macs: int) -> dict[str, float]:
    """How much of the MACs reduction the pruned graph turns into speed.

    Returns:
        speedup (dense_ms / pruned_ms), macs_ratio (dense / pruned MACs), kept_macs (pruned / dense)
        and efficiency (speedup / macs_ratio; 1.0 means latency fell exactly as much as MACs).
    """
    speedup = dense_ms / pruned_ms
    macs_ratio = dense_macs / pruned_macs
    return {"speedup": speedup, "macs_ratio": macs_ratio, "kept_macs": pruned_macs / dense_macs,
            "efficiency": speedup / macs_ratio}


def target_status(kept_macs: float, eff: float) -> str:
    """``met``/``missed`` for graphs keeping at most half of the dense MACs, ``n/a`` for the others."""
    if kept_macs > TARGET_MAX_KEPT:
        return "n/a"
    return "met" if eff >= TARGET_EFFICIENCY else "missed"


def task_efficiency(dense: Graph, pruned: Graph, measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The efficiency entry of one task at the reference setting."""
    ref = next(s for s in measured if (s["batch"], s["threads"]) == REFERENCE)
    lat = ref["latency"]
    entry = efficiency(lat[dense.key]["median_ms"], lat[pruned.key]["median_ms"], dense.macs, pruned.macs)
    status = target_status(entry["kept_macs"], entry["efficiency"])
    return {"batch": REFERENCE[0], "threads": REFERENCE[1], "requested": ref["requested"], **entry,
            "target": status, "meets_target": None if status == "n/a" else status == "met"}


def task_settings(task: str, measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: the three graphs' latency and the pruned graph's speedups."""
    rows = []
    for s in measured:
        lat = {kind: s["latency"]["full" if kind == "full" else f"{task}/{kind}"] for kind in GRAPH_KINDS}
        rows.append({"batch": s["batch"], "threads": s["threads"], "requested": s["requested"], "latency": lat,
                     "speedup_full_over_pruned": lat["full"]["median_ms"] / lat["pruned"]["median_ms"],
                     "speedup_dense_over_pruned": lat["dense"]["median_ms"] / lat["pruned"]["median_ms"]})
    return rows


def task_entry(task: str, spec: TaskSpec, graphs: dict[str, Graph], accuracy: dict[str, Any],
               measured: list[dict[str, Any]], kept_counts: dict[str, str], block: int | None) -> dict[str, Any]:
    """Everything bench.json says about one task."""
    by_kind = {"full": graphs["full"], "dense": graphs[f"{task}/dense"], "pruned": graphs[f"{task}/pruned"]}
    files = {kind: {"file": g.file, "macs": g.macs,
                    "params": g.params, "metrics": accuracy[g.key][task]} for kind, g in by_kind.items()}
    return {"kind": spec.kind, "target_label": spec.target, "metric": PRIMARY_METRIC[spec.kind], "graphs": files,
            "settings": task_settings(task, measured),
            "efficiency": {**task_efficiency(by_kind["dense"], by_kind["pruned"], measured),
                           "unaligned_layers": unaligned_layers(kept_counts, block)}}


def unaligned_layers(kept_counts: dict[str, str], block: int | None) -> dict[str, str]:
    """Route layers (``"kept/filters"``) whose kept count is not a multiple of ``block``."""
    if not block:
        return {}
    return {layer: count for layer, count in kept_counts.items() if int(count.split("/")[0]) % block}


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, onnxruntime version and the load average (latency is noisy under load)."""
    import onnxruntime as ort

    cpu, flags = cpu_facts()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "onnxruntime": ort.__version__,
            "nchwc_channel_block": channel_block(flags), "numpy": np.__version__, "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


# --- the run ------------------------------------------------------------------------------------

def bench_run(run_dir: str | Path, opts: BenchOptions = BenchOptions(), *, command: str = "",
              say: Say = lambda _: None) -> dict[str, Any]:
    """Benchmark ``RUN_DIR/export/`` and write bench.json, bench.md and latency_accuracy.png into RUN_DIR.

    Args:
        run_dir: a run directory with an export (``drmgf export``).
        opts: settings and stopping rules.
        command: the command line to record in the report.
        say: progress messages.

    Returns:
        The bench.json document.
    """
    opts.validate()
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    export_dir = run_dir / "export"
    verify_graphs(manifest, export_dir)
    graphs = manifest_graphs(manifest, export_dir)
    specs = task_specs(manifest)
    split = load_split(run_dir, opts.split)
    split = split.subset(slice(0, opts.limit)) if opts.limit else split
    machine = machine_info()
    accuracy = measure_accuracy(graphs, specs, split, manifest, opts, say)
    pre = manifest["input"]["preprocessing"]
    images = normalize(split.images[:max(REFERENCE[0], *opts.batches)], tuple(pre["mean"]), tuple(pre["std"])).numpy()
    measured = measure_latency(graphs, images, opts, say)
    machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    document = bench_document(run_dir, manifest, graphs, specs, accuracy, measured, opts, machine, command, len(split))
    write_outputs(run_dir, document)
    return document


def bench_document(run_dir: Path, manifest: dict[str, Any], graphs: list[Graph], specs: dict[str, TaskSpec],
                   accuracy: dict[str, Any], measured: list[dict[str, Any]], opts: BenchOptions,
                   machine: dict[str, Any], command: str, n_images: int) -> dict[str, Any]:
    """The bench.json document."""
    by_key = {g.key: g for g in graphs}
    full = manifest["full"]
    return {
        "schema": SCHEMA, "run": str(run_dir), "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "options": {**asdict(opts), "batches": list(opts.batches), "threads": list(opts.threads)},
        "session": session_info(graphs[0].path),
        "split": {"name": opts.split, "images": n_images},
        "export": {"epoch": manifest.get("epoch"), "method": manifest.get("method"),
                   "routes_rule": manifest["routes"].get("rule")},
        "reference": {"batch": REFERENCE[0], "threads": REFERENCE[1], "target_efficiency": TARGET_EFFICIENCY,
                      "applies_when_kept_macs_at_most": TARGET_MAX_KEPT},
        "full": {"file": full["file"], "outputs": full["outputs"], "macs": int(full["macs"]), "params": int(full["params"])},
        "settings": [{k: s[k] for k in ("batch", "threads", "requested")} for s in measured],
        "tasks": {t: task_entry(t, specs[t], by_key, accuracy, measured, manifest["tasks"][t].get("kept_counts", {}),
                                machine["nchwc_channel_block"]) for t in specs},
    }


def session_info(path: Path) -> dict[str, Any]:
    """The onnxruntime session options every timed session uses (from ``onnx_io.session``)."""
    sess = session(path, 1)
    options = sess.get_session_options()  # type: ignore[attr-defined]
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime's default (spin)
        spinning = "default"
    return {"providers": sess.get_providers(),  # type: ignore[attr-defined]
            "graph_optimization_level": str(options.graph_optimization_level),
            "inter_op_num_threads": options.inter_op_num_threads, "execution_mode": str(options.execution_mode),
            "intra_op_allow_spinning": spinning}


def write_outputs(run_dir: Path, document: dict[str, Any]) -> None:
    """bench.json, bench.md and latency_accuracy.png, each written atomically."""
    from drmgf.export.plots import latency_accuracy_figure

    atomic_write_json(run_dir / "bench.json", document)
    atomic_write_text(run_dir / "bench.md", markdown(document))
    latency_accuracy_figure(figure_points(document), run_dir / "latency_accuracy.png",
                            f"batch {REFERENCE[0]}, {REFERENCE[1]} thread: accuracy vs latency ({document['split']['name']})")


def figure_points(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per task and graph at the reference setting."""
    points = []
    for task, entry in document["tasks"].items():
        ref = next(s for s in entry["settings"] if (s["batch"], s["threads"]) == REFERENCE)
        for kind in GRAPH_KINDS:
            points.append({"task": task, "graph": kind, "latency_ms": ref["latency"][kind]["median_ms"],
                           "metric": entry["metric"], "value": entry["graphs"][kind]["metrics"][entry["metric"]]})
    return points


# --- Markdown ----------------------------------------------------------------------------------

def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _accuracy_text(entry: dict[str, Any], kind: str) -> str:
    metric = entry["metric"]
    return f"{metric} {entry['graphs'][kind]['metrics'][metric]:.4f}"


def setting_rows(document: dict[str, Any], index: int) -> list[list[str]]:
    """Rows of one setting's table: task x graph."""
    rows = []
    for task, entry in document["tasks"].items():
        s = entry["settings"][index]
        lat = s["latency"]
        for kind in GRAPH_KINDS:
            g, t = entry["graphs"][kind], lat[kind]
            rows.append([task, kind, f"{g['macs']:,}", f"{g['params']:,}", f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}",
                         f"{t['images_per_s']:,.0f}", f"{lat['full']['median_ms'] / t['median_ms']:.2f}x",
                         f"{lat['dense']['median_ms'] / t['median_ms']:.2f}x", _accuracy_text(entry, kind)])
    return rows


def efficiency_rows(document: dict[str, Any]) -> list[list[str]]:
    rows = []
    for task, entry in document["tasks"].items():
        e, g = entry["efficiency"], entry["graphs"]
        rows.append([task, f"{g['dense']['macs']:,}", f"{g['pruned']['macs']:,}", f"{e['kept_macs']:.1%}",
                     f"{e['macs_ratio']:.2f}x", f"{e['speedup']:.2f}x", f"{e['efficiency']:.2f}", e["target"],
                     ", ".join(f"{k} {v}" for k, v in e["unaligned_layers"].items()) or "none"])
    return rows


SETTING_HEADERS = ["task", "graph", "MACs", "params", "median ms", "p90 ms", "images/s", "speedup vs full",
                   "speedup vs dense", "accuracy"]
EFFICIENCY_HEADERS = ["task", "MACs dense", "MACs pruned", "kept", "MACs ratio", "speedup", "efficiency", "target",
                      "layers off the channel block"]


def markdown(document: dict[str, Any]) -> str:
    """bench.md: one table per setting, the efficiency table, the machine and the command."""
    o = document["options"]
    parts = [f"# drmgf bench: {document['run']}", "",
             f"Accuracy on the {document['split']['name']} split ({document['split']['images']} images), measured "
             "through onnxruntime. Latency: median and p90 of timed runs after warm-up; all graphs of a setting run "
             f"interleaved (round-robin), at least {o['min_runs']} runs each and {o['min_time_s']} s per setting. "
             "Speedup vs X = X's median / this graph's median. The full graph is one multi-output graph, "
             "measured once per setting; its accuracy is that task's output.", ""]
    for i, s in enumerate(document["settings"]):
        note = "" if s["requested"] else " (not requested; measured for the efficiency)"
        parts += [f"## batch {s['batch']}, {s['threads']} thread(s){note}", "",
                  _md_table(SETTING_HEADERS, setting_rows(document, i)), ""]
    return "\n".join(parts + _md_efficiency(document) + _md_machine(document))


def _md_efficiency(document: dict[str, Any]) -> list[str]:
    ref = document["reference"]
    return [f"## Efficiency (batch {ref['batch']}, {ref['threads']} thread)", "",
            f"efficiency = (dense/pruned speedup) / (dense/pruned MACs); target >= {ref['target_efficiency']} for "
            f"pruned graphs keeping at most {ref['applies_when_kept_macs_at_most']:.0%} of the dense MACs "
            "(n/a otherwise).", "", _md_table(EFFICIENCY_HEADERS, efficiency_rows(document)), "", _block_note(document), ""]


def _block_note(document: dict[str, Any]) -> str:
    block = document["machine"]["nchwc_channel_block"]
    if not block:
        return "onnxruntime's NCHWc channel block of this CPU is unknown; kept channel counts were not checked."
    return (f"onnxruntime (graph optimisation ORT_ENABLE_ALL) runs convolutions in NCHWc blocks of {block} channels on "
            f"this CPU: a layer keeping a count that is not a multiple of {block} costs about as much as the next "
            "multiple, so its MACs saving does not turn into speed.")


def _md_machine(document: dict[str, Any]) -> list[str]:
    m = document["machine"]
    return ["## Machine", "",
            f"- CPU: {m['cpu']}; {m['cores']} cores ({m['usable_cores']} usable)",
            f"- onnxruntime {m['onnxruntime']}; session: {_session_text(document['session'])}",
            f"- load average before: {_load(m.get('load_average'))}, after: {_load(m.get('load_average_after'))}"
            " (other processes make latency noisy)",
            f"- {m['platform']}, Python {m['python']}, {document['created']}", "",
            "## Command", "", f"```\n{document['command']}\n```", ""]


def _session_text(info: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in info.items())


def _load(values: list[float] | None) -> str:
    return "n/a" if not values else " ".join(f"{v:.2f}" for v in values)


__all__ = ["BenchOptions", "SCHEMA", "bench_run", "efficiency", "round_robin", "target_status"]
