"""``drmgf export RUN_DIR``: full.onnx plus one pruned ONNX graph per task, checked against PyTorch."""

from __future__ import annotations

import argparse
import sys

from drmgf.cli.format import table


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `drmgf train`")
    parser.add_argument("--routes", default=None, help="routes file (default: RUN_DIR/routes.json from `drmgf routes`)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks to export (default: all)")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="recovery fine-tune of each pruned task model on its own loss (default: 0)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or newer (default: 18)")
    parser.add_argument("--triton", default=None, metavar="DIR", help="also write a Triton model repository to DIR")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which checkpoint (default: last)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    from drmgf.export.exporter import export_run
    from drmgf.train.checkpoint import BEST, LAST

    def say(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    manifest = export_run(args.run_dir, routes_path=args.routes, tasks=tasks, finetune_epochs=args.finetune_epochs,
                          opset=args.opset, triton_dir=args.triton, say=say,
                          checkpoint=LAST if args.checkpoint == "last" else BEST)
    rows = []
    for task, e in manifest["tasks"].items():
        metric = next(iter(k for k in e["metrics_test"]["dense"] if k != "loss"))
        after = e["metrics_test"].get("pruned_finetuned", e["metrics_test"]["pruned"])[metric]
        rows.append([task, e["dense"]["macs"], e["pruned"]["macs"], f"{e['pruned']['macs'] / e['dense']['macs']:.1%}",
                     e["pruned"]["params"], f"{metric} {e['metrics_test']['dense'][metric]:.4f} -> {after:.4f}",
                     f"{max(e['dense']['parity_max_abs'], e['pruned']['parity_max_abs']):.1e}"])
    print(table(["task", "MACs dense", "MACs pruned", "kept", "params", "test (dense -> pruned)", "max |ORT-torch|"], rows))
    print(f"exported to {args.run_dir}/export (full.onnx, one graph per task, dense/, manifest.json)")
    return 0
