"""The command line in-process (``drmgf.cli.main.main``): help text, list, version, exit codes,
messages, and train -> evaluate on the tiny ``shapes`` data. One subprocess checks the console script."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import drmgf
from drmgf.cli.commands import COMMANDS
from drmgf.config import TrainConfig
from drmgf.data import DATASETS
from drmgf.methods import METHODS
from drmgf.models import MODELS
from drmgf.train.checkpoint import LAST
from tests.helpers import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--limit-train", "24", "--limit-test", "8", "--width", "4", "--batch-size", "8", "--eval-batch-size", "16"]
Digests = Callable[[Path], dict[str, str]]


def flat(text: str) -> str:
    """Whitespace-normalised text, so help wrapping does not matter."""
    return " ".join(text.split())


def metrics_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One two-epoch run trained through ``drmgf train``: (run dir, stdout, stderr). Copy before changing it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code, stdout, stderr = run_cli(["train", *TINY, "--epochs", "2", "--out", str(out)])
    assert code == 0, stderr
    return out, stdout, stderr


@pytest.fixture
def run_copy(trained: tuple[Path, str, str], tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    return copy


# ---------------------------------------------------------------- help, list, version


def test_top_level_help_lists_every_command() -> None:
    code, out, _ = run_cli(["--help"])
    assert code == 0 and out.startswith("usage: drmgf")
    assert {"train", "evaluate", "list"} <= set(COMMANDS)
    for name, (help_text, _, _) in COMMANDS.items():
        assert flat(f"{name} {help_text}") in flat(out), name
    assert "--version" in out and "--verbose" in out


def test_no_command_prints_help_and_is_a_usage_error() -> None:
    code, out, _ = run_cli([])
    assert code == 2 and out.startswith("usage: drmgf") and "COMMAND" in out


def test_train_help_shows_the_flag_groups_and_every_flag_with_its_help() -> None:
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and out.startswith("usage: drmgf train")
    text = flat(out)
    for section in dataclasses.fields(TrainConfig):
        cls = section.default_factory  # type: ignore[misc]
        assert flat(f"{section.name}: {cls.__doc__.strip().splitlines()[0]}") in text, section.name
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flat(f"{flag}") in text and flat(f.metadata["help"]) in text, flag
    assert "--epochs EPOCHS training epochs (one DR-MGF/Meta-GF period per epoch) (default: 10)" in text
    assert "--out OUT run directory (config, metrics, checkpoints) (default: runs/run)" in text
    assert "--resume continue the run in --out from its last checkpoint" in text
    assert "-q, --quiet no progress bars or epoch lines" in text


def test_evaluate_help() -> None:
    code, out, _ = run_cli(["evaluate", "--help"])
    text = flat(out)
    assert code == 0 and out.startswith("usage: drmgf evaluate")
    assert "RUN_DIR directory written by `drmgf train --out`" in text
    assert "--split {test,val}" in text and "--checkpoint {last,best}" in text
    assert "--json print the result as JSON" in text


def test_list_prints_every_registered_entry_on_one_line() -> None:
    code, out, err = run_cli(["list"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    sections = {"datasets": DATASETS, "models": MODELS, "methods": METHODS}
    assert [line for line in lines if not line.startswith(" ")] == [f"{s}:" for s in sections]
    assert len(lines) == len(sections) + sum(len(r) for r in sections.values())
    i = 0
    for title, registry in sections.items():
        assert lines[i] == f"{title}:"
        for line, (name, entry) in zip(lines[i + 1:], registry.items()):
            assert re.fullmatch(rf"  {re.escape(name)} +{re.escape(entry.help)}", line), line
        i += 1 + len(registry)


def test_list_one_kind() -> None:
    code, out, _ = run_cli(["list", "models"])
    assert code == 0
    assert out.splitlines()[0] == "models:" and len(out.splitlines()) == 1 + len(MODELS)


def test_version_in_process_matches_pyproject() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert drmgf.__version__ == version
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out == f"drmgf {version}\n"


def test_console_script_version() -> None:
    script = Path(sys.executable).parent / "drmgf"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"drmgf {drmgf.__version__}\n"


# ---------------------------------------------------------------- usage errors: exit 2, one line


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--dataset", "nope"], "--dataset must be one of ['shapes"),
    (["train", "--model", "nope"], "--model must be one of ['resnet_sdn'"),
    (["train", "--method", "nope"], "--method must be one of ['ew'"),
    (["train", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["train", "--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
    (["train", "--task-weights", "colour=2"], "--task-weights must look like 'task=weight,...'"),
    (["train", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["evaluate"], "the following arguments are required: RUN_DIR"),
    (["evaluate", ".", "--split", "train"], "argument --split: invalid choice: 'train'"),
    (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    out = tmp_path / "run"
    extra = [*TINY, "--out", str(out)] if argv[0] == "train" else []
    code, stdout, stderr = run_cli(argv + extra)
    assert code == 2
    assert_one_line_error(stderr)
    assert message in stderr
    assert stdout == ""
    assert not out.exists()


# ---------------------------------------------------------------- runtime errors: exit 1, nothing modified


def test_evaluate_outside_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    code, stdout, stderr = run_cli(["evaluate", str(tmp_path)])
    assert code == 1 and stdout == ""
    assert_one_line_error(stderr, "evaluate")
    assert "is not a drmgf run directory (no config.json)" in stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_evaluate_a_corrupt_checkpoint(run_copy: Path, file_digests: Digests) -> None:
    ckpt = run_copy / LAST
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    before = file_digests(run_copy)
    code, stdout, stderr = run_cli(["evaluate", str(run_copy)])
    assert code == 1 and stdout == ""
    assert_one_line_error(stderr, "evaluate")
    assert "is not a readable drmgf checkpoint" in stderr
    assert file_digests(run_copy) == before


def test_train_into_an_existing_run_without_resume(run_copy: Path, file_digests: Digests) -> None:
    before = file_digests(run_copy)
    code, stdout, stderr = run_cli(["train", *TINY, "--epochs", "3", "--out", str(run_copy)])
    assert code == 1 and stdout == ""
    assert_one_line_error(stderr, "train")
    assert "already holds a run; pass --resume" in stderr
    assert file_digests(run_copy) == before


def test_resume_with_a_changed_setting_is_a_usage_error(run_copy: Path, file_digests: Digests) -> None:
    before = file_digests(run_copy)
    argv = ["train", *TINY, "--batch-size", "4", "--epochs", "3", "--out", str(run_copy), "--resume"]
    code, _, stderr = run_cli(argv)
    assert code == 2
    assert_one_line_error(stderr, "train")
    assert "was trained with --batch-size 8, not 4" in stderr
    assert file_digests(run_copy) == before


# ---------------------------------------------------------------- train -> evaluate


def test_train_prints_one_line_per_epoch(trained: tuple[Path, str, str]) -> None:
    out, stdout, stderr = trained
    assert stderr == ""  # no progress bars without a terminal
    lines = stdout.splitlines()
    rows = metrics_lines(out)
    assert len(lines) == len(rows) + 1
    for line, row in zip(lines, rows):
        match = re.fullmatch(r"epoch (\d+)/2  \d+\.\ds  train loss (\d+\.\d{4})  "
                             r"val mean_top1 (\d\.\d{4})  test mean_top1 (\d\.\d{4})", line)
        assert match, line
        epoch, train_loss, val, test = match.groups()
        assert int(epoch) == row["epoch"]
        assert float(train_loss) == pytest.approx(sum(row["train"].values()) / len(row["train"]), abs=6e-5)
        assert val == f"{row['val']['summary']['mean_top1']:.4f}"
        assert test == f"{row['test']['summary']['mean_top1']:.4f}"
    assert lines[-1] == f"run saved in {out} (config.json, metrics.jsonl, checkpoint.pt, best.pt)"


def test_quiet_train_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(["train", *TINY, "--epochs", "1", "-q", "--out", str(out)]) == (0, "", "")
    code, stdout, _ = run_cli(["train", *TINY, "--epochs", "2", "--resume", "--out", str(out)])
    assert code == 0
    assert [line.split()[1] for line in stdout.splitlines()[:-1]] == ["2/2"]  # only the new epoch
    assert [r["epoch"] for r in metrics_lines(out)] == [1, 2]


@pytest.mark.parametrize("split", ["test", "val"])
def test_evaluate_json_equals_the_last_metrics_line(trained: tuple[Path, str, str], split: str) -> None:
    out = trained[0]
    code, stdout, stderr = run_cli(["evaluate", str(out), "--json", "--split", split])
    assert code == 0 and stderr == ""
    result = json.loads(stdout)
    assert result["run"] == str(out) and result["split"] == split and result["epoch"] == 2
    assert {"tasks": result["tasks"], "summary": result["summary"]} == metrics_lines(out)[-1][split]


def test_evaluate_best_checkpoint(trained: tuple[Path, str, str]) -> None:
    out = trained[0]
    rows = metrics_lines(out)
    best = max(rows, key=lambda r: r["val_score"])
    code, stdout, _ = run_cli(["evaluate", str(out), "--json", "--checkpoint", "best"])
    result = json.loads(stdout)
    assert code == 0 and result["epoch"] == best["epoch"]
    assert {"tasks": result["tasks"], "summary": result["summary"]} == best["test"]


def test_evaluate_table(trained: tuple[Path, str, str]) -> None:
    out = trained[0]
    code, stdout, _ = run_cli(["evaluate", str(out)])
    assert code == 0
    lines = stdout.splitlines()
    last = metrics_lines(out)[-1]["test"]
    assert lines[0] == f"{out}  epoch 2  split test"
    assert lines[1].split() == ["task", "loss", "top1"] and set(lines[2]) <= {"-", " "}
    for line, (name, metrics) in zip(lines[3:], last["tasks"].items()):
        assert line.split() == [name, f"{metrics['loss']:.4f}", f"{metrics['top1']:.4f}"]
    assert lines[-1] == f"mean_top1 {last['summary']['mean_top1']:.4f}"
    assert len(lines) == 3 + len(last["tasks"]) + 1


def test_evaluate_an_empty_validation_split_is_a_one_line_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(["train", *TINY, "--epochs", "1", "-q", "--val-fraction", "0", "--out", str(out)])[0] == 0
    code, _, stderr = run_cli(["evaluate", str(out), "--split", "val"])
    assert code == 1
    assert_one_line_error(stderr, "evaluate")


def test_train_on_the_smallest_allowed_split_does_not_crash(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, stderr = run_cli(["train", "--limit-train", "2", "--limit-test", "4", "--width", "4", "-q",
                               "--epochs", "1", "--out", str(out)])
    if code != 0:
        assert_one_line_error(stderr, "train")


class _UserNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.shape = torch.nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"shape": self.shape(self.conv(x).mean((2, 3)))}


def test_evaluate_a_user_model_run_is_a_one_line_error(tiny_config: Callable[..., Any], tmp_path: Path) -> None:
    from drmgf.train import fit

    out = fit(tiny_config(tmp_path / "run"), model=_UserNet())
    code, _, stderr = run_cli(["evaluate", str(out)])
    assert code == 1
    assert_one_line_error(stderr, "evaluate")
