"""The one rule of stochastic resolutions for exact-grid keys (issue 26 part 3): which of a
partition's sizes a key whose targets are never interpolated (a SAM / SAM3 mosaic key) trains at.

Pure integer arithmetic, no torch: config validation and distill's store checks both use it.
"""

from __future__ import annotations

from collections.abc import Sequence


def exact_sizes(grid: int, sizes: Sequence[int], patch: int) -> tuple[int, ...]:
    """The sizes (px) whose student token grid (``size // patch`` per side) equals an exact key's
    ``grid``: the image's block of the teacher's mosaic tile, which is what the store holds for a
    mosaic key. At any other size the key is skipped for the step (interpolating SAM ruins it)."""
    return tuple(s for s in sizes if s // patch == grid)
