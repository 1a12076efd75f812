"""``drmgf evaluate RUN_DIR``: metrics of a run's checkpoint on a split."""

from __future__ import annotations

import argparse
import json

from drmgf.cli.format import metrics_table, summary_text


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `drmgf train --out`")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="split to evaluate (default: test)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last",
                        help="last epoch, or the best epoch on validation (default: last)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from drmgf.train import evaluate_run
    from drmgf.train.checkpoint import BEST, LAST

    result = evaluate_run(args.run_dir, split=args.split, device=args.device,
                          checkpoint=LAST if args.checkpoint == "last" else BEST)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['run']}  epoch {result['epoch']}  split {result['split']}")
    print(metrics_table(result))
    print(summary_text(result))
    return 0
