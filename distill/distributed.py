"""Process group for `torchrun` (DDP): NCCL on GPUs, gloo on CPU; a single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    # A gloo group beside NCCL for host flags (the stop signal): its all-reduce is a host round
    # trip between ranks and never waits for the device, so it can run every step.
    flags: Any = field(default=None, compare=False)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes checkpoints, metrics and exports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    flags = dist.new_group(backend="gloo") if world > 1 and dev.type == "cuda" else None
    return Dist(rank, world, local, dev, flags)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (identity alone)."""
    if not d.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / d.world


def any_across(d: Dist, flag: bool) -> bool:
    """True on every rank if it is True on any (e.g. one rank got SIGTERM)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])  # on the host: a device tensor's .item() would sync
    dist.all_reduce(t, group=d.flags)  # gloo (the default group on CPU, Dist.flags beside NCCL)
    return bool(t.item() > 0)
