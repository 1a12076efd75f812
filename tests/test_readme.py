"""The README's commands must keep working: every `drmgf` command parses, every flag exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from drmgf.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def drmgf_commands() -> list[str]:
    found = [line.split("#")[0].strip() for block in blocks("sh") for line in block.splitlines()]
    inline = [c for c in re.findall(r"`(drmgf [^`]+)`", README) if len(c.split()) > 2]  # not bare mentions
    return [c for c in found + inline if c.startswith("drmgf ") and "..." not in c and "TASK" not in c]


@pytest.mark.parametrize("command", drmgf_commands())
def test_readme_drmgf_command_parses(command: str) -> None:
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command


def test_readme_has_commands_for_every_pipeline_step() -> None:
    steps = {shlex.split(c)[1] for c in drmgf_commands()}
    assert {"train", "evaluate", "inspect", "routes", "export", "infer", "bench"} <= steps


def test_readme_python_example_compiles() -> None:
    (example,) = [b for b in blocks("python") if "fit(" in b]
    compile(example, "README.md", "exec")


def test_readme_train_cost_flags_exist() -> None:
    flags = set(re.findall(r"bench/train_cost\.py ([^`|]*)`", README))
    help_text = subprocess.run([sys.executable, str(ROOT / "bench" / "train_cost.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    for options in flags:
        for flag in re.findall(r"--[a-z-]+", options):
            assert flag in help_text, flag
