"""User-facing errors: one clear line and exit code 2 instead of a deep stack trace."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """A mistake the user can fix (bad path, unknown key, corrupt file...). The message says how."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run a console-script ``main`` and turn user mistakes into ``error: ...`` + exit code 2.

    ``KeyboardInterrupt`` exits 130. Any other exception is a bug and keeps its traceback.
    """
    try:
        code = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))
