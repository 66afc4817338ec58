"""The typed records featurize's stages hand each other, and the Ray Data columns they travel in.

    driver ─ TarItem ─▶ decode ─ GroupHeader (+ TarEnd) + pixels ─▶ teacher stages ─ + GroupResult
           + moments ─▶ finalizer (driver) ─ TarResult ─▶ job report

The stage modules (:mod:`~radio.featurize.decode`, :mod:`~radio.featurize.worker`,
:mod:`~radio.featurize.finalize`) import their records and column names from here, never each
other. Each record has one encoding to and from the columns of the Ray Data row it rides in; a
**row** below is a mapping of column name to value (one Ray Data row, or row ``i`` of a batch).

Columns of one group row (``W`` windows of ``R`` rows, ``N = W * R``):

    item                      str        the tar's :class:`TarItem` (:meth:`TarItem.encode`)
    group, row_start, windows int64      :class:`GroupHeader`
    keys                      str        the N sample keys joined by NUL ("" for a padding row): one
                                         cell, as fixed-width string tensors of different groups
                                         do not concatenate (a tar member name holds no NUL)
    end:groups … end:error               :class:`TarEnd` (``end:groups`` 0 on all but a tar's last group)
    valid                     [N] bool
    px{s}                     [N, s, s, 3] uint8, one per resolution (:func:`pixel_column`)
    res:{teacher}:…, res:{key}:…         :class:`GroupResult`, added by each teacher stage
    mom:{key}:{stream}        [1 + C + C²] float64 (:func:`pack_moments`)

Strings that may be absent travel as "" (error messages and truncation reasons are never empty).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from radio.store.moments import Moments

Row = Mapping[str, Any]


def pixel_column(resolution: int, pad: int = 0) -> str:
    """The ``[N, s + 2·pad, s + 2·pad, 3] uint8`` column of the group's crops resized to
    ``s = resolution`` and extended by ``pad`` px per side (a key's shift margin, issue 26)."""
    return f"px{resolution}" if pad == 0 else f"px{resolution}p{pad}"


def moments_column(key: str, stream: str) -> str:
    return f"mom:{key}:{stream}"


def pack_moments(m: Moments | None, dim: int) -> np.ndarray:
    """``[1 + C + C²]`` float64: count, mean, M2 (a fixed-shape Ray Data column)."""
    m = m or Moments.empty(dim)
    return np.concatenate([[float(m.count)], np.asarray(m.mean, np.float64), np.asarray(m.m2, np.float64).ravel()])


def unpack_moments(v: np.ndarray, dim: int) -> Moments:
    return Moments(int(v[0]), v[1 : 1 + dim].copy(), v[1 + dim :].reshape(dim, dim).copy())


def _text(v: Any) -> str | None:
    """A string column's value; "" stands for None."""
    return str(v) or None


def to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A Ray Data batch of ``rows`` (same columns each): strings as object columns, numbers and
    arrays stacked (``[n, ...]``)."""
    return {
        c: np.array([r[c] for r in rows], dtype=object)
        if isinstance(rows[0][c], str)
        else np.stack([np.asarray(r[c]) for r in rows])
        for c in rows[0]
    }


# ---- work ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeaturizeSettings:
    """What every worker must agree on; also recorded in the store."""

    seed: int = 0
    crop_kind: str = "random_resized"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_image_size: int = 32
    max_image_pixels: int = 64_000_000


@dataclass(frozen=True)
class KeyJob:
    """One target key: images resized to ``resolution``; ``mosaic`` k tiles them on a ``canvas``."""

    key: str
    resolution: int
    mosaic: int | None = None
    canvas: int = 1024
    pad: int = 0  # shift margin in px per side at ``resolution``: featurize.shift_margin × the teacher's patch


@dataclass(frozen=True)
class WorkItem:
    """One (tar, teacher) with incomplete target keys."""

    tar_index: int
    teacher: str  # the config's teacher name
    model: str  # registry name
    weights: str | None
    keys: tuple[KeyJob, ...]
    output_scale: float = 1.0  # the teacher config's output_scale, applied to every output


@dataclass(frozen=True)
class TarItem:
    """One tar's incomplete work: the (tar, teacher) items with their keys.

    Nested, so it travels as one ``item`` cell (the driver's input rows and every group row),
    encoded only by :meth:`encode` / :meth:`decode`."""

    tar_index: int
    work: tuple[WorkItem, ...]

    @property
    def resolutions(self) -> list[int]:
        return sorted({k.resolution for w in self.work for k in w.keys})

    @property
    def views(self) -> list[tuple[int, int]]:
        """(resolution, pad) of every pixel column the tar's keys need (:func:`pixel_column`)."""
        return sorted({(k.resolution, k.pad) for w in self.work for k in w.keys})

    def of(self, teacher: str) -> WorkItem | None:
        """This tar's work for ``teacher``, or None when all its keys are complete."""
        return next((w for w in self.work if w.teacher == teacher), None)

    def encode(self) -> str:
        return json.dumps({"tar_index": self.tar_index, "work": [asdict(w) for w in self.work]})

    @classmethod
    def decode(cls, s: str) -> TarItem:
        d = json.loads(s)
        work = tuple(
            WorkItem(
                w["tar_index"],
                w["teacher"],
                w["model"],
                w["weights"],
                tuple(KeyJob(**k) for k in w["keys"]),
                w["output_scale"],
            )
            for w in d["work"]
        )
        return cls(d["tar_index"], work)


def by_tar(items: list[WorkItem]) -> list[TarItem]:
    """Group (tar, teacher) work items into one item per tar, in tar order."""
    tars: dict[int, list[WorkItem]] = {}
    for it in items:
        tars.setdefault(it.tar_index, []).append(it)
    return [TarItem(t, tuple(w)) for t, w in sorted(tars.items())]


# ---- decode → teachers → finalizer ----------------------------------------------------------------


@dataclass(frozen=True)
class GroupHeader:
    """Which rows of the store one group fills: ``windows`` whole shards from ``row_start``;
    ``keys`` ``[N]`` the sample keys, "" for padding rows."""

    item: TarItem
    group: int  # index of the group within its tar
    row_start: int
    windows: int  # shards with real samples (a tar's last group may have fewer than W)
    keys: tuple[str, ...]

    def columns(self) -> dict[str, Any]:
        return {
            "item": self.item.encode(),
            "group": self.group,
            "row_start": self.row_start,
            "windows": self.windows,
            "keys": "\0".join(self.keys),
        }

    @classmethod
    def from_row(cls, row: Row) -> GroupHeader:
        return cls(
            TarItem.decode(str(row["item"])),
            int(row["group"]),
            int(row["row_start"]),
            int(row["windows"]),
            tuple(str(row["keys"]).split("\0")),
        )


@dataclass(frozen=True)
class TarEnd:
    """The tar's totals, carried by its last group (the manifest is durable by then)."""

    groups: int
    samples: int
    valid: int
    reasons: dict[str, int]  # invalid samples per reason
    truncated: str | None  # why the tar ended early, if it did
    error: str | None  # why the tar failed, if it did

    def columns(self) -> dict[str, Any]:
        return {
            "end:groups": self.groups,
            "end:samples": self.samples,
            "end:valid": self.valid,
            "end:reasons": json.dumps(self.reasons),
            "end:truncated": self.truncated or "",
            "end:error": self.error or "",
        }

    @staticmethod
    def absent() -> dict[str, Any]:
        """The columns of a group that is not its tar's last (``end:groups`` 0)."""
        return TarEnd(0, 0, 0, {}, None, None).columns()

    @classmethod
    def from_row(cls, row: Row) -> TarEnd | None:
        """The totals, or None for a group that is not its tar's last (a tar has at least one group)."""
        if not int(row["end:groups"]):
            return None
        return cls(
            int(row["end:groups"]),
            int(row["end:samples"]),
            int(row["end:valid"]),
            json.loads(str(row["end:reasons"])),
            _text(row["end:truncated"]),
            _text(row["end:error"]),
        )


@dataclass
class KeyOutcome:
    """One (group, key) of a teacher stage."""

    compute_seconds: float = 0.0  # teacher time only
    bytes: int = 0  # raw fp16 bytes of the valid rows
    teacher_inputs: int = 0  # images or canvases the teacher ran on
    compact_errors: tuple[float, float] | None = None  # Σ(y-ŷ)², Σy² when written compact


@dataclass
class GroupResult:
    """One (group, teacher): its error, wall time, and per key outcomes (keys it did not run are
    zeros: a stage's columns are the same for every row)."""

    error: str | None = None
    seconds: float = 0.0
    keys: dict[str, KeyOutcome] = field(default_factory=dict)

    def columns(self, teacher: str, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {f"res:{teacher}:error": self.error or "", f"res:{teacher}:seconds": self.seconds}
        for k in keys:
            o = self.keys.get(k, KeyOutcome())
            ce = o.compact_errors
            out |= {
                f"res:{k}:compute_seconds": o.compute_seconds,
                f"res:{k}:bytes": o.bytes,
                f"res:{k}:teacher_inputs": o.teacher_inputs,
                f"res:{k}:compact": ce is not None,
                f"res:{k}:compact_errors": np.array(ce or (0.0, 0.0), np.float64),
            }
        return out

    @classmethod
    def from_row(cls, row: Row, teacher: str, keys: list[str]) -> GroupResult:
        out = cls(_text(row[f"res:{teacher}:error"]), float(row[f"res:{teacher}:seconds"]))
        for k in keys:
            ce = row[f"res:{k}:compact_errors"]
            out.keys[k] = KeyOutcome(
                float(row[f"res:{k}:compute_seconds"]),
                int(row[f"res:{k}:bytes"]),
                int(row[f"res:{k}:teacher_inputs"]),
                (float(ce[0]), float(ce[1])) if bool(row[f"res:{k}:compact"]) else None,
            )
        return out


# ---- finalizer → job ----------------------------------------------------------------------------


@dataclass
class TarResult:
    """One (tar, teacher) of a run, as the driver reports it."""

    tar_index: int
    teacher: str
    keys: list[str]
    samples: int = 0
    valid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    compute_seconds: dict[str, float] = field(default_factory=dict)  # per key: teacher time only
    bytes_written: dict[str, int] = field(default_factory=dict)  # per key: raw fp16 bytes of valid rows
    teacher_inputs: dict[str, int] = field(default_factory=dict)  # per key: images or canvases the teacher ran on
    truncated: str | None = None
    error: str | None = None


__all__ = [
    "FeaturizeSettings",
    "GroupHeader",
    "GroupResult",
    "KeyJob",
    "KeyOutcome",
    "TarEnd",
    "TarItem",
    "TarResult",
    "WorkItem",
    "by_tar",
    "moments_column",
    "pack_moments",
    "pixel_column",
    "to_batch",
    "unpack_moments",
]
