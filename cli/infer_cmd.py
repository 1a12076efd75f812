"""``drmgf infer MODEL.onnx INPUT...``: run one exported graph on images or ``.npy`` arrays."""

from __future__ import annotations

import argparse
import json
from typing import Any

from drmgf.cli.format import table
from drmgf.errors import ConfigError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx",
                        help="a graph written by `drmgf export` (a task graph, dense/<task>.onnx or full.onnx)")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="image files (PNG, JPEG, ...) or .npy arrays: one image CxHxW / HxWxC or a batch "
                             "NxCxHxW / NxHxWxC, uint8 0..255 or float 0..1 as the manifest's pixel_range says; "
                             "never resized")
    parser.add_argument("--manifest", default=None, metavar="FILE",
                        help="the export's manifest.json (default: next to MODEL, or one folder up for dense/)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="classification: show the K best classes (default: 1)")
    parser.add_argument("--out", default="infer-out", metavar="DIR",
                        help="dense outputs: one .npy per input and output here (default: ./infer-out)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def prediction(entry: dict[str, Any]) -> str:
    """One table cell: ``circle 0.8123, square 0.1000`` or ``wrote FILE (labels FILE)``."""
    if "top" in entry:
        return ", ".join(f"{c['name'] if c['name'] is not None else 'class ' + str(c['index'])} {c['prob']:.4f}"
                         for c in entry["top"])
    labels = f" (labels {entry['labels_file']})" if "labels_file" in entry else ""
    return f"wrote {entry['file']}{labels}"


def run(args: argparse.Namespace) -> int:
    from drmgf.export.runtime import infer

    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    document = infer(args.model, args.inputs, manifest_path=args.manifest, out_dir=args.out, top=args.top)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    rows = [[r["input"], name, prediction(entry)] for r in document["results"] for name, entry in r["outputs"].items()]
    print(table(["input", "output", "prediction" if args.top == 1 else f"top {args.top} (softmax probability)"], rows))
    return 0
