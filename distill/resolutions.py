"""Stochastic resolutions (C-RADIOv4, issue 26 part 3): the student's input size per step.

A partition with ``resolutions: [...]`` trains each step at one size drawn from its set. The
draw is a pure function of (seed, stage, partition, step): counter-based (SplitMix64 of the step
under a per-partition key), so every rank draws the same size with no communication, a resumed
run draws exactly the sizes an uninterrupted one would, and all the steps' sizes of a run come
from one vectorised call (a token budget needs their running sum of batch sizes).

Batch per size: a fixed batch (``batch_size``, the default) or a fixed token budget
(``tokens_per_step``: ``B(S) = tokens // (S/16)²`` rounded down to a multiple of the world size,
so every rank holds the same share and DDP averages equal batches). With a token budget a step's
rows are the next ``B(S)`` of the epoch stream (:meth:`radio.distill.data.EpochOrder.span`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radio.config import PATCH, PartitionConfig

from .counters import splitmix64
from .loss import KeyTarget


def size_draws(seed: int, stage: int, partition: int, steps: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """``[n]`` the input side (px) of each of ``steps [n]``: uniform over ``sizes``, a pure function
    of (seed, stage, partition, step)."""
    if len(sizes) == 1:
        return np.full(len(steps), sizes[0], dtype=np.int64)
    key = np.random.SeedSequence([seed, stage, partition, 26]).generate_state(1, np.uint64)[0]
    h = splitmix64(np.asarray(steps, dtype=np.int64).astype(np.uint64) ^ key)
    return np.asarray(sizes, dtype=np.int64)[(h % np.uint64(len(sizes))).astype(np.int64)]


class SizeSchedule:
    """One partition's size and global batch at every step ``0..total-1`` (all ranks alike).

    ``offset(step)``: the position of the step's first row in the epoch stream (token budget
    only: fixed batches keep :class:`~radio.distill.data.EpochOrder`'s step-aligned batches).
    """

    def __init__(self, part: PartitionConfig, seed: int, stage: int, partition: int, total: int, world: int = 1):
        self.sizes = size_draws(seed, stage, partition, np.arange(total), part.sizes)
        self.token_budget = part.tokens_per_step is not None
        if self.token_budget:
            per_size = {s: part.batch_at(s) // world * world for s in part.sizes}
            small = [f"{s} px: {b}" for s, b in per_size.items() if b == 0]
            if small:
                raise ValueError(
                    f"tokens_per_step {part.tokens_per_step} gives no image per rank on {world} ranks "
                    f"({', '.join(small)}); raise it to at least {world * (max(part.sizes) // PATCH) ** 2}"
                )
            lookup = np.array([per_size[int(s)] for s in self.sizes], dtype=np.int64)
            self.batches = lookup
            self.offsets = np.concatenate([[0], np.cumsum(lookup)])
        else:
            self.batches = np.full(total, part.batch_at(part.nominal), dtype=np.int64)
            self.offsets = np.zeros(0, np.int64)

    @classmethod
    def of(
        cls, part: PartitionConfig, seed: int, stage: int, partition: int, total: int, world: int = 1
    ) -> SizeSchedule | None:
        """The partition's schedule, or None for a fixed resolution and batch (the sampler's old path)."""
        if part.resolutions is None and part.tokens_per_step is None:
            return None
        return cls(part, seed, stage, partition, total, world)

    def size(self, step: int) -> int:
        return int(self.sizes[step])

    def batch(self, step: int) -> int:
        return int(self.batches[step])

    def offset(self, step: int) -> int:
        return int(self.offsets[step])


def step_sizes(
    schedules: Sequence[SizeSchedule | None], parts: Sequence[PartitionConfig], step: int
) -> tuple[list[int], list[int]]:
    """(input side, global batch) of every partition at ``step``; fixed partitions keep theirs."""
    sizes = [s.size(step) if s is not None else p.nominal for s, p in zip(schedules, parts)]
    batches = [s.batch(step) if s is not None else p.batch_at(p.nominal) for s, p in zip(schedules, parts)]
    return sizes, batches


def skips_keys(partitions: Sequence[tuple[int, Sequence[KeyTarget]]]) -> bool:
    """Whether some step may leave a key out (an exact key at a drawn size its grid does not fit):
    DDP must then look for parameters without a gradient."""
    return any(t.sizes is not None for _, ts in partitions for t in ts)
