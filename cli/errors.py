"""Turn a user's mistake into one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from radio.errors import RadioError

F = TypeVar("F", bound=Callable)

EXIT_FAILED = 1  # the work ran and something failed (a tar, a check)
EXIT_USAGE = 2  # bad config or arguments: nothing was done


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: LINE`` for each line of ``message`` and return the Exit to raise."""
    for line in str(message).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)
    return typer.Exit(code)


def no_space_message(e: OSError) -> str:
    """``no space left on device: PATH`` (the path when the error names one)."""
    where = e.filename or e.filename2
    return f"no space left on device: {where}" if where else "no space left on device"


def user_errors(fn: F) -> F:
    """Decorate a command: any :class:`~radio.errors.RadioError` prints ``error: ...`` and exits
    2 (or the error class's ``exit_code``: 1 where the run's data is at fault); a full disk
    (``OSError(ENOSPC)``) prints ``error: no space left on device: PATH`` and exits 1.

    Every part's error class derives from ``RadioError``, so nothing is listed here by hand.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RadioError as e:
            raise fail(str(e), getattr(e, "exit_code", EXIT_USAGE)) from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise fail(no_space_message(e), EXIT_FAILED) from None

    return wrapper  # type: ignore[return-value]
