"""User-facing failures: one line saying what went wrong, plus a hint.

Library code raises these; only cli/common.py turns them into an exit status,
so nothing below the CLI calls sys.exit.
"""
from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class BpfprobesError(Exception):
    """An expected failure: printed as `TOOL: error: WHAT` (+ hint), no traceback."""

    exit_code = EXIT_RUNTIME

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint


class UsageError(BpfprobesError):
    """The user's command line or spec is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class KernelError(BpfprobesError):
    """This kernel cannot do what was asked (exit 1)."""


class CompileError(BpfprobesError):
    """BCC could not compile or load the generated program (exit 1)."""
