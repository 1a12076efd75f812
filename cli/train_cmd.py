"""``drmgf train``: build a TrainConfig from flags, run the loop, print one line per epoch."""

from __future__ import annotations

import argparse

from drmgf.cli.flags import add_train_flags, config_from_args
from drmgf.cli.format import epoch_line
from drmgf.cli.progress import Progress


def add_args(parser: argparse.ArgumentParser) -> None:
    add_train_flags(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or epoch lines")


def run(args: argparse.Namespace) -> int:
    from drmgf.train import fit

    cfg = config_from_args(args)
    progress = Progress(enabled=False if args.quiet else None)

    def on_epoch(row: dict) -> None:
        progress.close()
        if not args.quiet:
            print(epoch_line(row, cfg.optim.epochs), flush=True)

    try:
        out = fit(cfg, progress=progress, on_epoch=on_epoch)
    finally:
        progress.close()
    if not args.quiet:
        files = [f for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt") if (out / f).exists()]
        print(f"run saved in {out} ({', '.join(files)})")
    return 0
