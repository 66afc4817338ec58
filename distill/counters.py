"""Counter-based draws: a random value as a pure function of its coordinates.

Phase 2 draws crops of an image per epoch, an input size per step and a shift offset per row.
Each must be the same on every rank and after any resume without storing or communicating a
generator's state, so each is a hash of its coordinates (seed, stage, partition, step, row, ...)
through SplitMix64's finalizer rather than the next value of a stateful generator.
"""

from __future__ import annotations

import numpy as np


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on ``uint64`` arrays: a bijective bit mixer (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def unit_uniform(h: np.ndarray) -> np.ndarray:
    """``uint64`` hashes → uniforms in (0, 1) (53 bits, never 0, so a log is finite)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


__all__ = ["splitmix64", "unit_uniform"]
