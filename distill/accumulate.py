"""Gradient accumulation (``stages[].accumulate: N``): a rank's batch as N micro-batches.

Every loss of a step is a mean over its partition's batch, so the mean of the N micro-batches'
losses (equal sizes) is the loss of the whole batch, and backpropagating ``loss_i / N`` for each
micro-batch sums to the gradient of the one-step update (up to fp32 rounding). CPE crops and
flips are drawn for the global batch before the split, so the same images see the same crops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def _chunk(batch: dict, i: int, n: int) -> dict:
    size = batch["image"].shape[0] // n
    sl = slice(i * size, (i + 1) * size)
    return {
        **batch,
        "image": batch["image"][sl],
        "row": batch["row"][sl],
        "targets": {k: {s: t[sl] for s, t in streams.items()} for k, streams in batch["targets"].items()},
    }


def micro_batches(
    batches: list[dict], crops: list[torch.Tensor], n: int
) -> Iterator[tuple[int, list[dict], list[torch.Tensor]]]:
    """``(i, batches_i, crops_i)`` for micro-step ``i`` of ``n``: every partition's batch
    ``[B, ...]`` and crops ``[B, 4|5]`` cut into ``n`` consecutive slices of ``B / n`` rows."""
    if n == 1:
        yield 0, batches, crops
        return
    for i in range(n):
        size = [c.shape[0] // n for c in crops]
        yield i, [_chunk(b, i, n) for b in batches], [c[i * s : (i + 1) * s] for c, s in zip(crops, size)]


def sync_on_last(ddp: nn.Module | None, i: int, n: int) -> contextlib.AbstractContextManager:
    """DDP's gradient all-reduce only in the last micro-step's backward (``ddp.no_sync()`` before;
    ``ddp`` None: one process, nothing to sync)."""
    no_sync = getattr(ddp, "no_sync", None)
    return no_sync() if no_sync is not None and i < n - 1 else contextlib.nullcontext()


def mean_losses(total: dict[str, torch.Tensor] | None, out: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Running mean over micro-steps of each loss (detached: only for the log)."""
    part = {k: v.detach() / n for k, v in out.items()}
    return part if total is None else {k: total[k] + part[k] for k in total}
