"""The step log: each step's losses stay on the device until a log step moves them to the host.

Copying a loss to the host (``.cpu()``, ``.item()``, ``float()``) waits for the device to finish
every kernel queued so far: done each step, the host stops queueing the next step's work while
the GPU drains, and the GPU idles while the host prepares it. Here each step only stacks its
scalars (``[k]``, on the device, no sync); every ``log_every`` steps, at a checkpoint, at a stop
and at the end, :meth:`StepLog.flush` stacks the pending steps (``[n, k]``), all-reduces them in
one call, moves them to the host in one transfer (:func:`to_host`) and checks them.

The non-finite check rides on that transfer: a NaN or inf in a target reaches its key's loss, so
the pending values are the check. A flush runs before every checkpoint and before the final
weights, so nothing is ever written from parameters a non-finite step has touched; the metrics
get the records of the steps before the first bad one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radio.errors import RadioError

from . import distributed


def to_host(values: torch.Tensor) -> torch.Tensor:
    """The trainer's one device → host transfer of step values (a device sync on CUDA)."""
    return values.cpu()


@dataclass
class Pending:
    """One step not yet logged: its scalars ``[k]`` on the device (the losses named ``names``,
    then the gradient norm when clipping), its learning rate, the host time it waited for data,
    its global images and its ``extra`` host fields (drawn sizes). A stochastic-resolution step
    names its losses by the drawn sizes, so ``k`` and ``names`` may differ from step to step (never
    between ranks: the draws are the same on each)."""

    step: int
    lr: float
    names: list[str]
    values: torch.Tensor
    t_data: float
    images: int
    extra: dict


class BadStep(RadioError):
    """A flushed step whose values (on any rank) are not finite; ``local`` is this rank's own
    values of that step on the host, ``names`` their names."""

    def __init__(self, step: int, names: list[str], local: torch.Tensor):
        super().__init__(f"step {step} is not finite")
        self.step, self.names, self.local = step, names, local


class StepLog:
    """Pending steps of one stage run, flushed every ``log_every`` steps."""

    def __init__(self, d: distributed.Dist, log_every: int):
        self.d, self.log_every = d, log_every
        self.pending: list[Pending] = []
        self._since = time.perf_counter()

    def add(
        self,
        step: int,
        lr: float,
        losses: dict[str, torch.Tensor],
        grad_norm: torch.Tensor | None,
        t_data: float,
        images: int,
        extra: dict | None = None,
    ):
        """Keep step ``step``'s values on the device (no sync)."""
        names = list(losses)
        scalars = [losses[n].detach().float() for n in names]
        scalars += [grad_norm.detach().float()] if grad_norm is not None else []
        self.pending.append(Pending(step, lr, names, torch.stack(scalars), t_data, images, extra or {}))

    def due(self, step: int) -> bool:
        """Whether step ``step`` is a log step of its own (checkpoints, stops and the end flush too)."""
        return step % self.log_every == 0

    def flush(self) -> list[dict]:
        """The pending steps' metrics records, in step order, after one all-reduce and one host
        transfer; raises :class:`BadStep` for the first step with a non-finite value (the records
        returned so far are lost with the exception: ``flush_checked`` writes them first)."""
        if not self.pending:
            return []
        pending, self.pending = self.pending, []
        # [n, K]: steps with fewer values (a drawn size that skips keys) are padded with zeros
        width = max(len(p.values) for p in pending)
        local = torch.stack([F.pad(p.values, (0, width - len(p.values))) for p in pending])
        both = to_host(distributed.mean_across(self.d, local))  # (a NaN on any rank reaches every rank)
        values = [row[: len(p.values)] for p, row in zip(pending, both)]
        wall = time.perf_counter() - self._since  # after the sync: the device time of these steps
        self._since = time.perf_counter()
        bad = [i for i, v in enumerate(values) if not bool(torch.isfinite(v).all())]
        good = bad[0] if bad else len(pending)
        rate = sum(p.images for p in pending) / max(wall, 1e-9)
        wait = min(1.0, sum(p.t_data for p in pending) / max(wall, 1e-9))
        records = [
            {
                "step": p.step,
                "lr": p.lr,
                **{n: float(v) for n, v in zip(p.names, row)},
                "images_per_s": rate,
                "data_wait": wait,
                **p.extra,
            }
            for p, row in zip(pending[:good], values[:good])
        ]
        if good < len(pending):
            bad_local = to_host(pending[good].values)
            raise BadFlush(records, BadStep(pending[good].step, pending[good].names, bad_local))
        return records


class BadFlush(RadioError):
    """A flush that met a non-finite step: ``records`` are the good steps before it."""

    def __init__(self, records: list[dict], bad: BadStep):
        super().__init__(str(bad))
        self.records, self.bad = records, bad


def flush_into(log: StepLog, write: Callable[[dict], None]) -> None:
    """Flush ``log`` and ``write`` each record; on a non-finite step, write the good records
    before it, then raise its :class:`BadStep`."""
    try:
        records = log.flush()
    except BadFlush as e:
        for r in e.records:
            write(r)
        raise e.bad from None
    for r in records:
        write(r)
