"""Ray's own log lines on a local run go to a file, not into the driver's progress output.

Ray Data's INFO/WARNING lines and the C++ core worker's messages (e.g. about actor restarts)
are written to the driver process's file descriptor 2 by handlers set up when ``ray`` is
imported. :func:`ray_output_to` points descriptor 2 at a log file for the duration of a run and
gives ``sys.stderr`` (which the driver's progress and error lines use) a new handle on the
terminal, so the user sees only the driver's own lines; the summary names the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def log_path(run_folder: str | Path) -> Path:
    """``RUN/logs/featurize-YYYYmmdd-HHMMSS.log`` (UTC) for a run started now."""
    return Path(run_folder) / "logs" / f"featurize-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log"


@contextlib.contextmanager
def ray_output_to(path: Path | None) -> Iterator[Path | None]:
    """While active, descriptor 2 (Ray's handlers, the core worker) writes to ``path``;
    ``sys.stderr`` still reaches the terminal. ``path=None``: nothing is redirected."""
    if path is None:
        yield None
        return
    # Ray installs its stream handlers on import, bound to the sys.stderr object of that moment:
    # import it while that object still writes to descriptor 2, so they follow the redirect.
    import ray  # noqa: F401
    import ray.data  # noqa: F401

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.dup(2)
    original = sys.stderr
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    sys.stderr = open(
        terminal,
        "w",
        buffering=1,
        encoding=getattr(original, "encoding", None) or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )
    # Ray's Python handlers may hold a stream that is not descriptor 2 (e.g. rich's proxy while a
    # progress bar is live): point them at descriptor 2 too, and back afterwards.
    fd2 = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
    moved = []
    for name in [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]:
        for handler in getattr(logging.getLogger(name), "handlers", []):
            if type(handler) is logging.StreamHandler:
                moved.append((handler, handler.setStream(fd2)))
    try:
        yield path
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
        fd2.close()
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = original
        os.dup2(terminal, 2)
        os.close(terminal)
