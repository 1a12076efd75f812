"""``drmgf inspect RUN_DIR``: what a DR-MGF (or Meta-GF) run learned, per shared layer and task."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from drmgf.cli.format import table
from drmgf.errors import UserError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `drmgf train --method drmgf`")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which checkpoint (default: last)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drmgf.importance import summarize_drmgf, summarize_metagf
    from drmgf.train.checkpoint import BEST, LAST, load_checkpoint

    ckpt = load_checkpoint(Path(args.run_dir) / (LAST if args.checkpoint == "last" else BEST))
    method = ckpt["config"]["method"]["method"]
    if method == "drmgf":
        rows = summarize_drmgf(ckpt["method"])
    elif method == "metagf":
        rows = summarize_metagf(ckpt["method"], ckpt["config"]["method"]["metagf_mode"])
    else:
        raise UserError(f"{args.run_dir} was trained with --method {method}, which learns no importance; "
                        "inspect a drmgf or metagf run (`drmgf routes --score magnitude` works on any run)")
    if args.json:
        print(json.dumps({"method": method, "epoch": ckpt["epoch"], "rows": rows}, indent=2))
        return 0
    print(f"{args.run_dir}: {method}, epoch {ckpt['epoch']}, {len({r['layer'] for r in rows})} shared layers")
    print(_rows_table(rows))
    print()
    print(_totals(rows))
    return 0


def _rows_table(rows: list[dict]) -> str:
    if not rows:
        return "(no shared layers)"
    keys = [k for k in rows[0] if k not in ("layer", "task")]
    body, last = [], None
    for r in rows:
        body.append([r["layer"] if r["layer"] != last else "", r["task"]] + [r[k] for k in keys])
        last = r["layer"]
    return table(["layer", "task"] + keys, body)


def _totals(rows: list[dict]) -> str:
    """Filters (channels) each task dominates over all shared layers."""
    won: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for r in rows:
        won[r["task"]] += int(r["dominates"])
        total[r["task"]] += int(r.get("filters", r.get("channels", 0)))
    return table(["task", "dominated", "of reachable"], [[t, won[t], total[t]] for t in won])
