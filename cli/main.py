"""``drmgf``: train, evaluate and list (more subcommands register in ``COMMANDS``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from drmgf import __version__
from drmgf.errors import ConfigError, UserError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser per command in ``drmgf.cli.commands.COMMANDS``."""
    from drmgf.cli.commands import COMMANDS

    parser = _Parser(prog="drmgf", description=(
        "Train multi-output networks with DR-MGF (dynamic routes + meta-weighted gradient fusion), "
        "then turn the learned importance into one pruned ONNX graph per task."))
    parser.add_argument("--version", action="version", version=f"drmgf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``drmgf`` console script; returns the exit status."""
    from drmgf.cli.commands import COMMANDS

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return COMMANDS[args.command][2](args)
    except ConfigError as exc:
        print(f"drmgf {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"drmgf {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"drmgf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
