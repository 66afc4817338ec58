"""Batches on the device one step ahead: the copy of step k+1 overlaps the compute of step k.

On CUDA the loader's batches arrive in pinned memory (``pin_memory``), are copied with
``non_blocking`` on a side stream, and the compute stream waits for that stream only when it
takes the batch; each tensor is marked as used by the compute stream (``record_stream``) so the
caching allocator does not hand its memory to the next copy too early. On CPU there is nothing
to overlap: the same order, the plain path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .data import next_batch, on_device


def _tensors(batch: dict) -> Iterator[torch.Tensor]:
    yield batch["image"]
    for streams in batch["targets"].values():
        yield from streams.values()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (the step's CPE crops) on ``device`` without a sync: a copy from pageable
    memory waits for the device; from pinned memory (the caching host allocator's) it is queued."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


class DevicePrefetch:
    """``next(prefetch)`` → ``(batches, t_data)``: one batch per loader (partition), on ``device``,
    and the host seconds spent waiting for the loaders to produce them. ``steps``: how many
    batches the loaders still yield (nothing is fetched past the last)."""

    def __init__(self, loaders: Sequence[Iterator[Any]], device: torch.device, steps: int):
        self.loaders, self.device, self.left = loaders, device, steps
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ahead = self._fetch() if steps > 0 else None

    def _fetch(self) -> tuple[list[dict], float]:
        t0 = time.perf_counter()
        host = [next_batch(it) for it in self.loaders]
        t_data = time.perf_counter() - t0
        if self.stream is None:
            return [on_device(b, self.device) for b in host], t_data
        with torch.cuda.stream(self.stream):
            return [on_device(b, self.device) for b in host], t_data

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> tuple[list[dict], float]:
        if self._ahead is None:
            raise StopIteration
        batches, t_data = self._ahead
        self.left -= 1
        if self.stream is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.stream)  # a device-side wait: the host does not block
            for b in batches:
                for t in _tensors(b):
                    t.record_stream(compute)
        self._ahead = self._fetch() if self.left > 0 else None  # step k+1's copy, queued before k's compute
        return batches, t_data
