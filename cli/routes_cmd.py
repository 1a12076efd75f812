"""``drmgf routes RUN_DIR``: explicit per-task routes from learned importance (or filter magnitude)."""

from __future__ import annotations

import argparse

from drmgf.cli.format import table
from drmgf.errors import ConfigError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `drmgf train`")
    parser.add_argument("--rule", default="threshold", choices=["threshold", "keep-ratio", "dominance"],
                        help="threshold: score/max >= tau; keep-ratio: top ceil(R*filters); dominance: keep unless "
                             "another task's fusion share beats this task's by MARGIN (default: threshold)")
    parser.add_argument("--tau", type=float, default=0.1, help="threshold rule: keep filters scoring >= tau * max (default: 0.1)")
    parser.add_argument("--keep-ratio", type=float, default=0.5, help="keep-ratio rule: fraction of filters kept (default: 0.5)")
    parser.add_argument("--margin", type=float, default=1.1, help="dominance rule: margin (default: 1.1)")
    parser.add_argument("--score", default="importance", choices=["importance", "magnitude"],
                        help="importance: DR-MGF's learned v (drmgf runs); magnitude: filter L2 norm (any run)")
    parser.add_argument("--align", default="auto",
                        help="round each coupled group's kept filters up to a multiple of N (1 = off); auto: "
                             "onnxruntime's channel block on this CPU (16 with AVX-512, 8 with AVX2) (default: auto)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which checkpoint (default: last)")
    parser.add_argument("--out", default=None, help="routes file to write (default: RUN_DIR/routes.json, plus .png)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw routes.png")


def parse_align(text: str) -> int:
    """``auto`` -> this CPU's onnxruntime channel block; else a positive integer."""
    if text == "auto":
        from drmgf.export.hardware import this_channel_block

        return this_channel_block()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--align must be auto or a channel count >= 1, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"--align must be auto or a channel count >= 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from drmgf.export.routes import RouteRule
    from drmgf.export.routes_run import routes_for_run
    from drmgf.train.checkpoint import BEST, LAST

    rule = RouteRule(rule=args.rule, tau=args.tau, keep_ratio=args.keep_ratio, margin=args.margin, score=args.score,
                     align=parse_align(args.align))
    doc = routes_for_run(args.run_dir, rule, checkpoint=LAST if args.checkpoint == "last" else BEST,
                         out=args.out, plot=not args.no_plot)
    for task, route in doc["tasks"].items():
        rows = [[layer, f"{len(e['kept'])}/{e['filters']}", e["selected"], e["score"]["min"], e["score"]["max"]]
                for layer, e in route["layers"].items()]
        share = route["macs_kept"] / route["macs_dense"] if route["macs_dense"] else 1.0
        print(f"task {task}: MACs {route['macs_kept']:,} of {route['macs_dense']:,} ({share:.1%}), "
              f"params {route['params_kept']:,} of {route['params_dense']:,}")
        print(table(["layer", "kept", "chosen", "score min", "score max"], rows))
        print()
    if doc["overlap"]:
        print("route overlap (Jaccard): " + ", ".join(f"{k.replace('|', '/')} {v:.2f}" for k, v in doc["overlap"].items()))
    where = args.out or f"{args.run_dir}/routes.json"
    print(f"routes saved in {where}" + ("" if args.no_plot else " (and .png)"))
    return 0
