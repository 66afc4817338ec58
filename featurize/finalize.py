"""The driver's end of the featurize graph: merge group moments, write moments and markers.

Groups of a tar reach the driver in any order (several actors per teacher, preserve_order off).
Per (tar, key), group moments are merged in group order (a small reorder buffer), so a resumed
run stores the same bits as an uninterrupted one. When every group of a tar has arrived (the
last one says how many there are, and the CPU stage wrote the manifest before sending it), and
the teacher reported no error for the tar, the driver writes the key's moments and then its
completion marker: the marker stays the last write of a (tar, key) (DESIGN.md §3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radio.store import compact
from radio.store.layout import FeatureStore
from radio.store.moments import Moments

from .records import GroupHeader, GroupResult, KeyJob, TarEnd, TarItem, TarResult, moments_column, unpack_moments
from .teachers import get_spec


@dataclass
class _KeyState:
    next_group: int = 0
    pending: dict[int, dict[str, Moments]] = field(default_factory=dict)
    merged: dict[str, Moments | None] = field(default_factory=dict)

    def add(self, group: int, moments: dict[str, Moments]) -> None:
        self.pending[group] = moments
        while self.next_group in self.pending:  # merge in group order: deterministic bits
            for stream, m in self.pending.pop(self.next_group).items():
                prev = self.merged.get(stream)
                self.merged[stream] = m if prev is None else prev.merge(m)
            self.next_group += 1


@dataclass
class _TarState:
    item: TarItem
    seen: int = 0
    end: TarEnd | None = None
    results: dict[str, TarResult] = field(default_factory=dict)  # teacher → result so far
    keys: dict[str, _KeyState] = field(default_factory=dict)
    compact_errors: dict[str, list[float]] = field(default_factory=dict)  # key → Σ(y-ŷ)², Σy² (written compact)


class Finalizer:
    """Feed it every group row leaving the last teacher stage; it yields one :class:`TarResult`
    per (tar, teacher) when the tar is done."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self.tars: dict[int, _TarState] = {}

    def add(self, row: dict[str, Any]) -> Iterator[TarResult]:
        header = GroupHeader.from_row(row)
        t = header.item.tar_index
        st = self.tars.setdefault(t, _TarState(header.item))
        st.seen += 1
        if (end := TarEnd.from_row(row)) is not None:
            st.end = end
        for work in header.item.work:
            keys = [k.key for k in work.keys]
            res = GroupResult.from_row(row, work.teacher, keys)
            tr = st.results.setdefault(work.teacher, TarResult(t, work.teacher, keys))
            tr.seconds += res.seconds
            tr.error = tr.error or res.error
            for k in work.keys:
                o = res.keys[k.key]
                tr.compute_seconds[k.key] = tr.compute_seconds.get(k.key, 0.0) + o.compute_seconds
                tr.bytes_written[k.key] = tr.bytes_written.get(k.key, 0) + o.bytes
                tr.teacher_inputs[k.key] = tr.teacher_inputs.get(k.key, 0) + o.teacher_inputs
                if o.compact_errors is not None:
                    e = st.compact_errors.setdefault(k.key, [0.0, 0.0])
                    e[0] += o.compact_errors[0]
                    e[1] += o.compact_errors[1]
                streams = self._streams(work.model)
                moments = {s: unpack_moments(np.asarray(row[moments_column(k.key, s)]), d) for s, d in streams.items()}
                st.keys.setdefault(k.key, _KeyState()).add(header.group, {s: m for s, m in moments.items() if m.count})
        if st.end is not None and st.seen == st.end.groups:
            yield from self._finish(st)
            del self.tars[t]

    @staticmethod
    def _streams(model: str) -> dict[str, int]:
        spec = get_spec(model)
        return {"features": spec.feature_dim} | ({"summary": spec.summary_dim} if spec.summary_dim else {})

    def _finish(self, st: _TarState) -> Iterator[TarResult]:
        end = st.end
        assert end is not None  # finished only once the end is known
        t = st.item.tar_index
        for work in st.item.work:
            tr = st.results[work.teacher]
            tr.samples, tr.valid, tr.reasons, tr.truncated = end.samples, end.valid, dict(end.reasons), end.truncated
            tr.error = end.error or tr.error
            if tr.error is None:
                for k in work.keys:
                    self._complete(t, k, work.model, st.keys[k.key], st.compact_errors.get(k.key))
            yield tr

    def _complete(self, tar: int, job: KeyJob, model: str, ks: _KeyState, compact_errors: list[float] | None) -> None:
        for stream, dim in self._streams(model).items():
            self.store.write_moments(job.key, tar, stream, ks.merged.get(stream) or Moments.empty(dim))
        if compact_errors is not None:  # written compact by the teacher stage
            compact.mark_direct_complete(self.store, job.key, tar, *compact_errors)
        self.store.mark_complete(job.key, tar)  # last: the (tar, key) is now complete


__all__ = ["Finalizer"]
