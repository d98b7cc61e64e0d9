"""User-facing errors: one clear line and exit code 2 instead of a deep stack trace."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn


class UsageError(Exception):
    """A mistake the user can fix (bad path, unknown key, corrupt file...). The message says how."""


def _argparse_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    raise UsageError(f"{parser.prog}: {message} (see `{parser.prog} --help`)")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """While a command runs: argparse's mistakes (unknown option, bad value, missing argument) raise
    :class:`UsageError` instead of printing a usage block, so every bad input ends the same way; SIGTERM raises
    ``SystemExit(143)`` so ``finally`` blocks and temporary folders are cleaned up as on Ctrl-C."""
    previous_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error  # type: ignore[method-assign,assignment]
    previous_term: Any = None
    try:
        previous_term = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        argparse.ArgumentParser.error = previous_error  # type: ignore[method-assign]
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _terminated(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a console-script ``main`` and turn user mistakes into ``error: ...`` + exit code 2.

    ``KeyboardInterrupt`` exits 130, SIGTERM 143 (both after cleaning up). Any other exception is a bug and keeps
    its traceback.
    """
    try:
        with one_line_errors():
            code = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))
