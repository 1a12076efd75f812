"""``drmgf bench RUN_DIR``: onnxruntime latency and accuracy of the full, dense and pruned graphs."""

from __future__ import annotations

import argparse
import shlex
import sys

from drmgf.cli.format import table

HELP = "onnxruntime latency, throughput and accuracy of the exported graphs (writes bench.json, bench.md, latency_accuracy.png)"


def int_list(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> (1, 32); anything else is a usage error naming the value."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,32, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,32, got {text!r}")
    return values


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory exported with `drmgf export`")
    parser.add_argument("--batch", type=int_list, default=(1, 32), metavar="B,B", help="batch sizes (default: 1,32)")
    parser.add_argument("--threads", type=int_list, default=(1, 2), metavar="T,T",
                        help="onnxruntime intra-op threads (default: 1,2); batch 32 with 1 thread is always measured "
                             "for the efficiency")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="images for the inputs and the accuracy (default: test)")
    parser.add_argument("--runs", type=int, default=20, metavar="N",
                        help="timed runs per graph and setting, at least (default: 20)")
    parser.add_argument("--min-time", type=float, default=1.0, metavar="S",
                        help="seconds of timed runs per setting, at least (default: 1.0)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="accuracy on the first N images of the split only (default: all)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def command_line(args: argparse.Namespace) -> str:
    """The command with every option resolved, to reproduce the measurement."""
    argv = ["drmgf", "bench", str(args.run_dir), "--batch", ",".join(map(str, args.batch)),
            "--threads", ",".join(map(str, args.threads)), "--split", args.split, "--runs", str(args.runs),
            "--min-time", f"{args.min_time:g}"]
    return shlex.join(argv + (["--limit", str(args.limit)] if args.limit else []))


def run(args: argparse.Namespace) -> int:
    from drmgf.export.bench import BenchOptions, bench_run

    def say(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    opts = BenchOptions(batches=args.batch, threads=args.threads, split=args.split, min_runs=args.runs,
                        min_time_s=args.min_time, limit=args.limit)
    doc = bench_run(args.run_dir, opts, command=command_line(args), say=say)
    ref = doc["reference"]
    rows = []
    for task, entry in doc["tasks"].items():
        e = entry["efficiency"]
        rows.append([task, f"{e['kept_macs']:.1%}", f"{e['macs_ratio']:.2f}x", f"{e['speedup']:.2f}x",
                     f"{e['efficiency']:.2f}", e["target"]])
    print(f"efficiency at batch {ref['batch']}, {ref['threads']} thread "
          f"(target >= {ref['target_efficiency']} when at most {ref['applies_when_kept_macs_at_most']:.0%} of MACs are kept):")
    print(table(["task", "kept MACs", "MACs ratio", "speedup dense/pruned", "efficiency", "target"], rows))
    block = doc["machine"].get("nchwc_channel_block")
    off = {t: e["efficiency"]["unaligned_layers"] for t, e in doc["tasks"].items() if e["efficiency"]["unaligned_layers"]}
    if off:
        listed = "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in layers.items()) for t, layers in off.items())
        print(f"note: kept channel counts that are not multiples of {block} cost like the next multiple in "
              f"onnxruntime on this CPU ({listed})")
    load = doc["machine"].get("load_average")
    if load and load[0] > 0.5 * (doc["machine"]["usable_cores"] or 1):
        print(f"note: load average {load[0]:.2f} on {doc['machine']['usable_cores']} cores; latency is noisy under load")
    print(f"written: {args.run_dir}/bench.json, {args.run_dir}/bench.md, {args.run_dir}/latency_accuracy.png")
    return 0
