"""``drmgf bench``: one tiny exported run, benchmarked once through the CLI; the files' structure, ORT
accuracy equal to PyTorch's, the efficiency arithmetic and rule, the timing loop, and one-line errors.
No test asserts on a measured time."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drmgf.config import TrainConfig
from drmgf.export.bench import (
    GRAPH_KINDS, REFERENCE, SCHEMA, BenchOptions, channel_block, efficiency, fill_batch, round_robin, settings,
    target_status, unaligned_layers,
)
from drmgf.export.exporter import export_run
from drmgf.export.routes import RouteRule
from drmgf.export.routes_run import routes_for_run
from drmgf.train import fit
from drmgf.train.evaluate import evaluate
from drmgf.train.loop import load_run
from tests.helpers import assert_one_line_error as _one_line_error
from tests.helpers import run_cli

ARTIFACTS = ("bench.json", "bench.md", "latency_accuracy.png")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., TrainConfig]) -> Path:
    """A 1-epoch DR-MGF run (64 train / 32 test images, width 4), routed keep-ratio 0.5 and exported."""
    out = tmp_path_factory.mktemp("bench") / "run"
    cfg = tiny_config(out, data={"limit_train": 64, "limit_test": 32},
                      method={"method": "drmgf", "period_steps": 2})
    fit(cfg)
    routes_for_run(out, RouteRule(rule="keep-ratio", keep_ratio=0.5), plot=False)
    export_run(out)
    return out


@pytest.fixture(scope="module")
def benched(exported: Path) -> tuple[dict[str, Any], str]:
    """``drmgf bench`` with tiny settings (batch 32 / 1 thread not requested): (bench.json, stdout)."""
    code, stdout, stderr = run_cli(["bench", str(exported), "--batch", "1,2", "--threads", "1", "--runs", "3",
                                    "--min-time", "0", "-q"])
    assert code == 0, stderr
    return json.loads((exported / "bench.json").read_text()), stdout


def test_bench_writes_the_three_files(exported: Path, benched: tuple[dict[str, Any], str]) -> None:
    doc, stdout = benched
    for name in ARTIFACTS:
        assert (exported / name).stat().st_size > 0, name
    assert (exported / "latency_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(exported.glob(".*.tmp")) and not list(exported.glob("tmp*.png"))
    assert "efficiency at batch 32, 1 thread" in stdout and "bench.json" in stdout and "latency_accuracy.png" in stdout
    for task in doc["tasks"]:
        assert task in stdout


def test_bench_json_structure(exported: Path, benched: tuple[dict[str, Any], str]) -> None:
    doc, _ = benched
    manifest = json.loads((exported / "export" / "manifest.json").read_text())
    assert doc["schema"] == SCHEMA
    assert set(doc["tasks"]) == set(manifest["tasks"])
    assert [(s["batch"], s["threads"], s["requested"]) for s in doc["settings"]] == [(1, 1, True), (2, 1, True),
                                                                                       (32, 1, False)]
    assert doc["command"].startswith(f"drmgf bench {exported} --batch 1,2 --threads 1")
    assert {"cpu", "cores", "onnxruntime"} <= set(doc["machine"])
    for task, entry in doc["tasks"].items():
        m = manifest["tasks"][task]
        assert entry["graphs"]["dense"]["macs"] == m["dense"]["macs"]
        assert entry["graphs"]["pruned"]["params"] == m["pruned"]["params"]
        assert entry["graphs"]["full"]["macs"] == manifest["full"]["macs"]
        assert len(entry["settings"]) == 3
        for s in entry["settings"]:
            for kind in GRAPH_KINDS:
                stats = s["latency"][kind]
                assert stats["runs"] >= 3 and 0 < stats["median_ms"] <= stats["p90_ms"]
                assert stats["images_per_s"] == pytest.approx(s["batch"] * 1000 / stats["median_ms"])
            lat = s["latency"]
            assert s["speedup_dense_over_pruned"] == pytest.approx(lat["dense"]["median_ms"] / lat["pruned"]["median_ms"])
            assert s["speedup_full_over_pruned"] == pytest.approx(lat["full"]["median_ms"] / lat["pruned"]["median_ms"])


def manifest_counts(run_dir: Path) -> dict[str, dict[str, str]]:
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    return {task: e["kept_counts"] for task, e in manifest["tasks"].items()}


def test_efficiency_entries_follow_their_numbers(exported: Path, benched: tuple[dict[str, Any], str]) -> None:
    doc, _ = benched
    for task, entry in doc["tasks"].items():
        e, g = entry["efficiency"], entry["graphs"]
        ref = next(s for s in entry["settings"] if (s["batch"], s["threads"]) == REFERENCE)
        assert (e["batch"], e["threads"], e["requested"]) == (32, 1, False)
        assert e["macs_ratio"] == pytest.approx(g["dense"]["macs"] / g["pruned"]["macs"])
        assert e["speedup"] == pytest.approx(ref["speedup_dense_over_pruned"])
        assert e["efficiency"] == pytest.approx(e["speedup"] / e["macs_ratio"])
        assert e["target"] == target_status(e["kept_macs"], e["efficiency"])
        assert e["meets_target"] == {"met": True, "missed": False, "n/a": None}[e["target"]]
        assert set(e["unaligned_layers"]) <= set(manifest_counts(exported)[task])


def test_bench_md_tables(exported: Path, benched: tuple[dict[str, Any], str]) -> None:
    doc, _ = benched
    md = (exported / "bench.md").read_text()
    header = ("| task | graph | MACs | params | median ms | p90 ms | images/s | speedup vs full | speedup vs dense "
              "| accuracy |")
    assert md.count(header) == 3
    assert "## batch 32, 1 thread(s) (not requested; measured for the efficiency)" in md
    assert "## Efficiency (batch 32, 1 thread)" in md and "## Machine" in md and doc["command"] in md
    rows = [line for line in md.splitlines() if line.startswith("| exit")]
    assert len(rows) == 3 * len(doc["tasks"]) * len(GRAPH_KINDS) + len(doc["tasks"])


def test_ort_accuracy_equals_pytorch(exported: Path, benched: tuple[dict[str, Any], str]) -> None:
    doc, _ = benched
    run, _ = load_run(exported)
    torch_metrics = evaluate(run.model, run.data.test, run.tasks, run.data)["tasks"]
    assert doc["split"] == {"name": "test", "images": len(run.data.test)}
    for task, entry in doc["tasks"].items():
        for kind in ("dense", "full"):
            got = entry["graphs"][kind]["metrics"]
            assert got["top1"] == torch_metrics[task]["top1"], (task, kind)
            assert got["loss"] == pytest.approx(torch_metrics[task]["loss"], abs=1e-5)


def test_efficiency_arithmetic() -> None:
    e = efficiency(dense_ms=10.0, pruned_ms=4.0, dense_macs=1000, pruned_macs=250)
    assert e == pytest.approx({"speedup": 2.5, "macs_ratio": 4.0, "kept_macs": 0.25, "efficiency": 0.625})
    assert efficiency(8.0, 2.0, 400, 100)["efficiency"] == pytest.approx(1.0)


@pytest.mark.parametrize(("kept", "eff", "status"), [
    (0.25, 0.9, "met"), (0.5, 0.85, "met"), (0.5, 0.849, "missed"), (0.1, 0.2, "missed"),
    (0.51, 0.1, "n/a"), (0.75, 2.0, "n/a"),
])
def test_target_applies_only_when_at_most_half_is_kept(kept: float, eff: float, status: str) -> None:
    assert target_status(kept, eff) == status


def test_channel_block_and_unaligned_layers() -> None:
    assert channel_block({"avx2", "avx512f"}) == 16 and channel_block({"avx2"}) == 8 and channel_block(set()) is None
    counts = {"stem.0": "20/32", "blocks.0.conv1": "16/32", "blocks.1.conv2": "51/64"}
    assert unaligned_layers(counts, 16) == {"stem.0": "20/32", "blocks.1.conv2": "51/64"}
    assert unaligned_layers(counts, 4) == {"blocks.1.conv2": "51/64"}
    assert unaligned_layers(counts, None) == {}


def test_round_robin_interleaves_and_counts() -> None:
    calls: list[str] = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = round_robin(runners, min_runs=3, min_time_s=0.0, max_runs=100, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    capped = round_robin(runners, min_runs=2, min_time_s=1e9, max_runs=5, warmup=0)
    assert all(len(v) == 5 for v in capped.values())


def test_settings_add_the_reference_once() -> None:
    assert settings(BenchOptions(batches=(1, 32), threads=(1, 2))) == [(1, 1, True), (32, 1, True), (1, 2, True),
                                                                        (32, 2, True)]
    assert settings(BenchOptions(batches=(8,), threads=(2,))) == [(8, 2, True), (32, 1, False)]


def test_fill_batch_repeats_images() -> None:
    import numpy as np

    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
    assert fill_batch(images, 5).ravel().tolist() == [0, 1, 2, 0, 1]


def test_tampered_graph_is_a_one_line_error(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(exported, copy)
    graph = copy / "export" / "dense" / f"{next(iter(json.loads((exported / 'bench.json').read_text())['tasks']))}.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    code, _, err = run_cli(["bench", str(copy), "-q"])
    assert code == 1
    assert_one_line_error(err)
    assert "sha256" in err and "changed after export" in err


def test_missing_export_is_a_one_line_error(tmp_path: Path) -> None:
    code, _, err = run_cli(["bench", str(tmp_path), "-q"])
    assert code == 1
    assert_one_line_error(err)
    assert f"drmgf export {tmp_path}" in err


@pytest.mark.parametrize("argv", [["--batch", "1,x"], ["--batch", "0"], ["--threads", ""], ["--threads", "1,-2"],
                                  ["--runs", "0"], ["--min-time", "-1"]])
def test_bad_flags_exit_2_with_one_line(argv: list[str], tmp_path: Path) -> None:
    code, _, err = run_cli(["bench", str(tmp_path), *argv])
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert argv[0] in err


def test_help_names_the_flags() -> None:
    code, out, _ = run_cli(["bench", "--help"])
    assert code == 0
    for flag in ("--batch", "--threads", "--split", "--runs", "--min-time", "--limit"):
        assert flag in out


def assert_one_line_error(err: str, command: str = "bench") -> None:
    _one_line_error(err, command)
