"""The subcommands: name -> (help, add_args, run). Order is the order of ``drmgf --help``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from drmgf.cli import evaluate_cmd, list_cmd, train_cmd

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "train": ("train a multi-output model with a method (writes a run directory)", train_cmd.add_args, train_cmd.run),
    "evaluate": ("metrics of a trained run on its test or validation split", evaluate_cmd.add_args, evaluate_cmd.run),
    "list": ("datasets, models and methods", list_cmd.add_args, list_cmd.run),
}
