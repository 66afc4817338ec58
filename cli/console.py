"""One rich Console setting for every command's tables."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    """The terminal's width on a terminal; 160 columns in logs and pipes, so tables stay readable."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)
