"""The subcommands: name -> (help, add_args, run). Order is the order of ``drmgf --help``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from drmgf.cli import bench_cmd, evaluate_cmd, export_cmd, infer_cmd, inspect_cmd, list_cmd, routes_cmd, train_cmd

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "train": ("train a multi-output model with a method (writes a run directory)", train_cmd.add_args, train_cmd.run),
    "evaluate": ("metrics of a trained run on its test or validation split", evaluate_cmd.add_args, evaluate_cmd.run),
    "inspect": ("per shared layer and task: the importance and fusion weights a drmgf/metagf run learned",
                inspect_cmd.add_args, inspect_cmd.run),
    "routes": ("explicit per-task routes from learned importance (writes routes.json, routes.png)",
               routes_cmd.add_args, routes_cmd.run),
    "export": ("full.onnx and one pruned ONNX graph per task, checked in onnxruntime (writes RUN_DIR/export/)",
               export_cmd.add_args, export_cmd.run),
    "infer": ("run one exported ONNX graph on images or .npy arrays (top classes, dense maps as .npy)",
              infer_cmd.add_args, infer_cmd.run),
    "bench": (bench_cmd.HELP, bench_cmd.add_args, bench_cmd.run),
    "list": ("datasets, models and methods", list_cmd.add_args, list_cmd.run),
}
