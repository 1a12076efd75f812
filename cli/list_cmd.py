"""``drmgf list``: datasets, models and methods, one line each."""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=["datasets", "models", "methods"], help="list only one kind")


def run(args: argparse.Namespace) -> int:
    from drmgf.data import DATASETS
    from drmgf.methods import METHODS
    from drmgf.models import MODELS

    sections = {"datasets": DATASETS, "models": MODELS, "methods": METHODS}
    for title, registry in sections.items():
        if args.what and args.what != title:
            continue
        print(f"{title}:")
        width = max(len(n) for n in registry)
        for name, entry in registry.items():
            print(f"  {name.ljust(width)}  {entry.help}")
    return 0
