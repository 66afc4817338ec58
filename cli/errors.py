"""Turn a user's mistake into one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

F = TypeVar("F", bound=Callable)

EXIT_FAILED = 1  # the work ran and something failed (a tar, a check)
EXIT_USAGE = 2  # bad config or arguments: nothing was done


def _user_errors() -> dict[type[BaseException], int]:
    # Imported lazily: each part owns its error type; the CLI only maps them to exit codes.
    from radio.config import ConfigError
    from radio.store.layout import StoreError
    from radio.store.shards import ShardError

    from radio.featurize.job import FeaturizeError
    from radio.featurize.teachers.registry import TeacherError
    from radio.distill.export import ExportError
    from radio.evaluate.errors import EvalError
    from radio.store.hadamard import HadamardError

    return {ConfigError: EXIT_USAGE, ShardError: EXIT_USAGE, StoreError: EXIT_USAGE,
            FeaturizeError: EXIT_USAGE, TeacherError: EXIT_USAGE, HadamardError: EXIT_USAGE,
            ExportError: EXIT_USAGE, EvalError: EXIT_USAGE}  # fmt: skip


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` and return the Exit to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def user_errors(fn: F) -> F:
    """Decorate a command: known user errors print one line and exit with their status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except tuple(_user_errors()) as e:
            code = next(c for t, c in _user_errors().items() if isinstance(e, t))
            raise fail(str(e), code) from None

    return wrapper  # type: ignore[return-value]
