"""Helpers shared by the CLI-level tests."""

from __future__ import annotations

import contextlib
import io

from drmgf.cli.main import main


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``drmgf argv`` in-process; argparse's exits count as statuses."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(err: str, command: str | None = None) -> None:
    """One line on stderr, no traceback, prefixed with the command (any drmgf prefix when None)."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith(f"drmgf {command}: error: " if command else "drmgf"), err
