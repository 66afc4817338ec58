"""The feature store: one Zarr v3 group of cached teacher targets, plus parquet manifests.

Layout under the store path::

    zarr.json                      group attributes: format, plan (tars → row ranges), featurize settings
    targets/KEY/                   one group per target key, provenance in its attributes
        features  [rows, h, w, C]  fp16; chunk = 1 row (the read unit), shard = shard_rows rows (the write unit)
        summary   [rows, Cs]       fp16; chunk = shard_rows rows (absent for SAM)
        moments/features_{count,mean,m2}   per tar: [T], [T, C], [T, C, C] float64
        moments/summary_{count,mean,m2}    the same for the summary
        complete  [T]              uint8 completion marker per tar, written last
    normalizers/TEACHER/STREAM/FP/ one PHI-S per teacher from all its keys, by fingerprint (`radio fit-phis`, store/normalizers.py)
    manifest/NNNNNNNN.parquet      per tar: row, key, uid, tar, ordinal, offset, size, valid, reason,
                                   crop box (crop_x, crop_y, crop_w, crop_h) and crop_index

The path is a local directory or an object-store URL (``s3://bucket/prefix``): every file above is
an object written whole, through :class:`~radio.store.objects.Location`.

Invariants (DESIGN.md §3): rows are planned before any worker starts, each tar owning a range
padded to whole Zarr shards; the driver pre-allocates every array; exactly one task writes a
(tar, target key), in whole shards; its completion marker is written after features, summary,
moments and manifest are durable. Each of those writes is one object (a Zarr shard or chunk, a
parquet file), atomic on object stores as on disk; nothing relies on rename. Plain Zarr v3 and
parquet: no pickles anywhere. Every chunk of every array ends in a crc32c and every manifest page
has a checksum (:mod:`.checksums` makes the codec chains and reads them back).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from . import checksums
from .moments import Moments
from .objects import TEMP_NAME, Location, StoreError, retried
from .provenance import COMPACT, TargetProvenance

STORE_FORMAT = 1
# What an empty folder may already hold when a store is created in it: the lease a featurize
# run takes before planning (radio.store.lease), and a killed writer's temporary files.
CREATE_IGNORES = ("leases",)
# Featurize settings that stores written before issue 23 do not record, as those stores behave
# (compared as if present, so such a store still resumes under a config that means the same).
LEGACY_SETTINGS: dict[str, Any] = {"crop_ratio": [3 / 4, 4 / 3]}


@dataclass(frozen=True)
class TarPlan:
    """Rows ``[row_start, row_start + rows)`` belong to tar ``index``; ``samples`` of them are used."""

    index: int
    path: str
    bytes: int
    samples: int
    row_start: int
    rows: int
    error: str | None = None  # the tar could not be listed completely (truncated or unreadable)


@dataclass(frozen=True)
class Plan:
    """The row layout. Each sample (image) of a tar owns ``crops_per_image`` consecutive rows, one
    per crop: sample ``ordinal``'s crop ``k`` is row ``row_start + ordinal * K + k``."""

    shard_rows: int
    tars: tuple[TarPlan, ...]
    crops_per_image: int = 1  # K; stores planned before issue 23 have 1

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tars)

    def planned_rows(self, tar: TarPlan) -> int:
        """Rows the tar's samples fill (``samples × K``; the rest of its range is padding)."""
        return tar.samples * self.crops_per_image

    def image_rows(self, rows: np.ndarray) -> np.ndarray:
        """``[B]`` row ids → ``[B]`` the first row (crop 0) of each row's image: the image's id."""
        rows = np.asarray(rows, dtype=np.int64)
        k = self.crops_per_image
        if k == 1 or not len(rows):
            return rows
        starts = np.array([t.row_start for t in self.tars], dtype=np.int64)
        first = starts[np.searchsorted(starts, rows, side="right") - 1]
        return rows - (rows - first) % k

    @classmethod
    def build(cls, listing: list[tuple[str, int, int, str | None]], shard_rows: int, crops_per_image: int = 1) -> Plan:
        """From ``(path, bytes, samples, error)`` per tar: disjoint, shard-aligned row ranges of
        ``crops_per_image`` rows per sample."""
        tars, row = [], 0
        for i, (path, size, samples, error) in enumerate(listing):
            rows = -(-samples * crops_per_image // shard_rows) * shard_rows  # padded: no shard shared by two tars
            tars.append(TarPlan(i, path, size, samples, row, rows, error))
            row += rows
        return cls(shard_rows, tuple(tars), crops_per_image)

    def to_json(self) -> dict[str, Any]:
        return {
            "shard_rows": self.shard_rows,
            "crops_per_image": self.crops_per_image,
            "tars": [asdict(t) for t in self.tars],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(d["shard_rows"], tuple(TarPlan(**t) for t in d["tars"]), int(d.get("crops_per_image", 1)))


MANIFEST_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("uid", pa.string()),
        ("tar", pa.string()),
        ("tar_index", pa.int32()),
        ("ordinal", pa.int32()),
        ("offset", pa.int64()),
        ("size", pa.int64()),
        ("valid", pa.bool_()),
        ("reason", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("crop_x", pa.int32()),
        ("crop_y", pa.int32()),
        ("crop_w", pa.int32()),
        ("crop_h", pa.int32()),
        ("crop_index", pa.int32()),  # k of the image's K crops (its rows: row - crop_index onwards)
    ]
)
# Manifests written before issue 23 hold one square box per image (crop_size), no crop_index.
LEGACY_CROP = ("crop_w", "crop_h", "crop_index")


def read_manifest(data: bytes, name: str, columns: list[str] | None = None) -> pa.Table:
    """One tar's manifest (page checksums verified) with the columns of :data:`MANIFEST_SCHEMA`
    (or ``columns``); an old manifest's square ``crop_size`` reads as ``crop_w = crop_h`` and its
    rows as crop 0."""
    try:
        have = pq.read_schema(pa.BufferReader(data)).names
    except (pa.ArrowException, OSError, ValueError):
        have = []  # a damaged footer: read_parquet says so in one line
    if "crop_size" not in have or "crop_w" in have:
        return checksums.read_parquet(data, name, columns)
    want = columns if columns is not None else MANIFEST_SCHEMA.names
    read = [c for c in want if c not in LEGACY_CROP]
    if any(c in want for c in LEGACY_CROP) and "crop_size" not in read:
        read.append("crop_size")
    table = checksums.read_parquet(data, name, read)
    size = table.column("crop_size") if "crop_size" in table.column_names else None
    out = {}
    for c in want:
        if c in ("crop_w", "crop_h"):
            out[c] = size
        elif c == "crop_index":
            out[c] = pa.array(np.zeros(table.num_rows, np.int32))
        else:
            out[c] = table.column(c)
    return pa.table(out)


@dataclass(frozen=True)
class TargetInfo:
    """Shape facts of a target key, from its provenance attributes (``attrs``: as stored)."""

    key: str
    grid: tuple[int, int]
    feature_dim: int
    summary_dim: int | None
    attrs: dict[str, Any]

    @property
    def provenance(self) -> TargetProvenance:
        """The key's typed provenance; raises :class:`StoreError` when featurize wrote none."""
        try:
            return TargetProvenance.from_json(self.attrs)
        except StoreError as e:
            raise StoreError(f"target key {self.key}: {e}") from None


class FeatureStore:
    """Open a store (a directory or an object-store URL). Use :meth:`create` to plan a new one.

    ``path`` is the store as given (str); ``location`` reads and writes its objects.
    """

    def __init__(self, path: str | Path):
        self.location = Location(path)
        self.path = self.location.url
        if not self.location.exists("zarr.json"):
            raise StoreError(f"{self.path}: not a radio store (no zarr.json); run `radio featurize` first")
        self.root = self._open_root()
        attrs = dict(self.root.attrs)
        if "radio_store" not in attrs:
            raise StoreError(f"{self.path}: not a radio store (zarr.json has no radio_store attribute)")
        if attrs["radio_store"] != STORE_FORMAT:
            raise StoreError(
                f"{self.path}: store format {attrs['radio_store']!r}; this radio reads format {STORE_FORMAT}"
            )
        try:
            self.plan = Plan.from_json(attrs["plan"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            why = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise StoreError(f"{self.path}: damaged root attribute plan ({why})") from None
        self.settings: dict[str, Any] = attrs.get("featurize", {})
        # Array handles of the write paths: opening one reads its metadata (~2 ms), which a
        # teacher stage would otherwise pay per shard and the driver per (tar, key) and stream.
        self._handles: dict[tuple[str, str], zarr.Array] = {}

    def _open_root(self) -> zarr.Group:
        writable = self.location.writable()
        zstore = self.location.zarr_store(read_only=not writable)

        def open_root() -> zarr.Group:
            return zarr.open_group(store=zstore, mode="r+" if writable else "r")

        # Reads only: a failed request is retried, then one line (see objects.retried).
        return open_root() if self.location.local is not None else retried(self.location.url_of("zarr.json"), open_root)

    # ---- creation (driver only) -------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, plan: Plan, settings: dict[str, Any]) -> FeatureStore:
        """Create a store for ``plan``, or open an existing one after checking it has the same plan.

        A new store is created only where nothing exists, or in an empty directory / prefix
        (:func:`check_empty`); anything else that is not a radio store is refused and left as it is.
        """
        location = Location(path)
        if location.exists("zarr.json"):
            store = cls(path)
            if store.plan.crops_per_image != plan.crops_per_image:
                raise StoreError(
                    f"{path}: the store was featurized with crops_per_image {store.plan.crops_per_image}, "
                    f"the config says {plan.crops_per_image}; its rows are laid out per crop: use a new --store"
                )
            if store.plan != plan:
                raise StoreError(
                    f"{path}: the store was planned for other shards (tars, sizes or shard_rows differ); "
                    "use a new --store or --overwrite"
                )
            changed = sorted(
                k
                for k in settings.keys() | store.settings.keys()
                if settings.get(k, LEGACY_SETTINGS.get(k)) != store.settings.get(k, LEGACY_SETTINGS.get(k))
            )
            if changed:
                raise StoreError(
                    f"{path}: the store was featurized with other settings ({', '.join(changed)}); "
                    "use a new --store or --overwrite"
                )
            return store
        check_empty(location)
        # Create, never clear: open_group's mode "w" would delete whatever is at the path first.
        # The attributes go in the same write as zarr.json (a store is never without its plan).
        attrs = {"radio_store": STORE_FORMAT, "plan": plan.to_json(), "featurize": settings}
        root = zarr.create_group(store=location.zarr_store(), overwrite=False, attributes=attrs)
        root.create_group("targets")
        return cls(path)

    def create_target(
        self,
        key: str,
        *,
        grid: tuple[int, int],
        feature_dim: int,
        summary_dim: int | None,
        provenance: TargetProvenance | dict[str, Any],
        compressor: str = "zstd",
        overwrite: bool = False,
    ) -> None:
        """Pre-allocate a target key's arrays (driver only); an existing key must match ``provenance``
        (featurize's; a plain dict of attributes for stores made by hand, as in tests).

        A key whose provenance differs but that has no complete tar is re-planned without
        ``overwrite``: nothing computed would be lost (e.g. a run stopped before its first tar).
        """
        self._handles.clear()  # a re-planned key gets new arrays
        if isinstance(provenance, TargetProvenance):
            provenance = provenance.record()
        targets = self.root["targets"]
        if key in targets:
            # `compact` is added by `radio store compact` (radio.store.compact), not by featurize.
            old = {k: v for k, v in targets[key].attrs.items() if k != COMPACT}
            if not overwrite and old != provenance and not self.completed(key).any():
                overwrite = True  # nothing to lose
            if not overwrite and old != provenance:
                changed = sorted(k for k in old.keys() | provenance.keys() if old.get(k) != provenance.get(k))
                raise StoreError(
                    f"{self.path}: target key {key} exists with other provenance ({', '.join(changed)}); "
                    "pass --overwrite to recompute it"
                )
            if not overwrite:
                return
            self.location.remove_prefix(f"targets/{key}")
            self.root = self._open_root()
            targets = self.root["targets"]
        g = targets.create_group(key, attributes=provenance)
        n, t, r = self.plan.total_rows, len(self.plan.tars), self.plan.shard_rows
        h, w = grid
        # Every chunk carries crc32c (store/checksums.py): a flipped bit is an error, never a target.
        make = checksums.create_array
        make(
            g,
            "features",
            shape=(n, h, w, feature_dim),
            dtype="float16",
            chunks=(1, h, w, feature_dim),
            shards=(r, h, w, feature_dim),
            compressor=compressor,
            fill_value=0,
            dimension_names=("row", "y", "x", "channel"),
        )
        streams = {"features": feature_dim}
        if summary_dim is not None:
            make(
                g,
                "summary",
                shape=(n, summary_dim),
                dtype="float16",
                chunks=(r, summary_dim),
                compressor=compressor,
                fill_value=0,
                dimension_names=("row", "channel"),
            )
            streams["summary"] = summary_dim
        m = g.create_group("moments")
        for stream, c in streams.items():
            make(m, f"{stream}_count", shape=(t,), dtype="int64", chunks=(1,), fill_value=0)
            make(m, f"{stream}_mean", shape=(t, c), dtype="float64", chunks=(1, c), fill_value=0)
            make(m, f"{stream}_m2", shape=(t, c, c), dtype="float64", chunks=(1, c, c), fill_value=0)
        make(g, "complete", shape=(t,), dtype="uint8", chunks=(1,), fill_value=0)

    # ---- reading ----------------------------------------------------------------------------

    @property
    def target_keys(self) -> list[str]:
        return sorted(self.root["targets"].group_keys())

    def target(self, key: str) -> TargetInfo:
        if key not in self.root["targets"]:
            have = ", ".join(self.target_keys) or "none"
            raise StoreError(f"{self.path}: no target key {key!r} (the store has: {have})")
        attrs = dict(self.root["targets"][key].attrs)
        return TargetInfo(key, tuple(attrs["grid"]), attrs["feature_dim"], attrs.get("summary_dim"), attrs)

    def array(self, key: str, name: str) -> zarr.Array:
        """``features``, ``summary``, ``complete`` or ``moments/...`` of a target key."""
        return self.root["targets"][key][name]

    def completed(self, key: str) -> np.ndarray:
        """``[T] bool``: which tars are complete for ``key``."""
        return checksums.read(self.array(key, "complete"), slice(None), f"{self.path}: targets/{key}/complete").astype(
            bool
        )

    def moments(self, key: str, stream: str = "features", max_tars: int | None = None) -> list[Moments]:
        """Per-tar moments of a stream (``features`` or ``summary``), complete tars only; with
        ``max_tars``, an evenly spaced subset of them (each tar's M2 is C² float64: reading all
        of a billion-image store's would mean terabytes)."""
        tars = self.tar_indices(key, max_tars)
        arrays = [self.array(key, f"moments/{stream}_{n}") for n in ("count", "mean", "m2")]

        def read(t: int) -> Moments:
            count, mean, m2 = (checksums.read(a, t, f"{self.path}: {key} tar {t}: {a.path}") for a in arrays)
            return Moments(int(count), mean, m2)

        return [read(t) for t in tars]

    def tar_indices(self, key: str, max_tars: int | None = None) -> list[int]:
        """The complete tars of ``key`` that :meth:`moments` reads (an evenly spaced subset with ``max_tars``)."""
        tars = np.flatnonzero(self.completed(key))
        if max_tars is not None and len(tars) > max_tars:
            tars = tars[np.linspace(0, len(tars) - 1, max_tars).round().astype(int)]
        return [int(t) for t in tars]

    @staticmethod
    def manifest_name(tar_index: int) -> str:
        """The manifest object of a tar, relative to the store."""
        return f"manifest/{tar_index:08d}.parquet"

    def marked_complete(self) -> np.ndarray:
        """``[T] bool``: tars complete for some target key (each of them must have its manifest)."""
        done = np.zeros(len(self.plan.tars), bool)
        for key in self.target_keys:
            done |= self.completed(key)
        return done

    def _manifest_bytes(self, required: np.ndarray | None = None) -> dict[int, bytes]:
        """The parquet bytes of every tar's manifest that exists (see :meth:`manifest_tables`)."""
        need = self.marked_complete() if required is None else required
        found = self.location.read_many([self.manifest_name(t.index) for t in self.plan.tars])
        out = {
            t.index: found[self.manifest_name(t.index)] for t in self.plan.tars if self.manifest_name(t.index) in found
        }
        missing = [t for t in self.plan.tars if need[t.index] and t.index not in out]
        if missing:
            t = missing[0]
            more = f" (and {len(missing) - 1} more tars)" if len(missing) > 1 else ""
            raise StoreError(
                f"{self.location.url_of(self.manifest_name(t.index))}: missing, but tar {t.index} "
                f"({t.path}) is marked complete{more}; run `radio store verify`"
            )
        return out

    def manifest_tables(
        self, columns: list[str] | None = None, required: np.ndarray | None = None
    ) -> dict[int, pa.Table]:
        """Every tar's manifest that exists, by tar index, as a table of ``columns`` (default all),
        its page checksums verified. A tar in ``required`` (``[T] bool``, default
        :meth:`marked_complete`) without one is a :class:`StoreError`: its rows must never read as
        "no rows"."""
        found = self._manifest_bytes(required)
        return {t: read_manifest(data, f"{self.path}/{self.manifest_name(t)}", columns) for t, data in found.items()}

    def manifest(self) -> pa.Table:
        """Manifest rows of every tar that has one, in row order (a complete tar must have one)."""
        tables = list(self.manifest_tables().values())
        if not tables:
            return MANIFEST_SCHEMA.empty_table()
        return pa.concat_tables(tables).sort_by("row")

    # ---- writing (one task per tar and target key) --------------------------------------------

    def write_manifest(self, tar_index: int, rows: list[dict[str, Any]]) -> None:
        """Write a tar's manifest as one object (atomic). Every task of a tar writes identical
        rows, so a second writer replaces the object with the same bytes."""
        data = checksums.parquet_bytes(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        self.location.write_bytes(self.manifest_name(tar_index), data)

    def _written(self, key: str, name: str) -> zarr.Array:
        """:meth:`array`, opened once per store object for the write paths below."""
        handle = self._handles.get((key, name))
        if handle is None:
            handle = self._handles[(key, name)] = self.array(key, name)
        return handle

    def write_shard(self, key: str, row_start: int, features: np.ndarray, summary: np.ndarray | None) -> None:
        """Write one whole Zarr shard of rows: ``features [shard_rows, h, w, C]``, ``summary [shard_rows, Cs]``."""
        r = self.plan.shard_rows
        if row_start % r or features.shape[0] != r:
            raise ValueError(f"write_shard takes whole shards: rows {row_start}..+{features.shape[0]} of {r}")
        self._written(key, "features")[row_start : row_start + r] = features
        if summary is not None:
            self._written(key, "summary")[row_start : row_start + r] = summary

    def write_moments(self, key: str, tar_index: int, stream: str, m: Moments) -> None:
        self._written(key, f"moments/{stream}_count")[tar_index] = m.count
        self._written(key, f"moments/{stream}_mean")[tar_index] = m.mean
        self._written(key, f"moments/{stream}_m2")[tar_index] = m.m2

    def mark_complete(self, key: str, tar_index: int) -> None:
        """The completion marker: the last write of a (tar, target key); atomic (one chunk object)."""
        self._written(key, "complete")[tar_index] = 1


def check_store_or_empty(path: str | Path) -> Location:
    """The store's location, when ``path`` holds a radio store or nothing a new store would
    overwrite; refuses with one line (:func:`check_empty`) otherwise, touching nothing."""
    location = Location(path)
    if not location.exists("zarr.json"):
        check_empty(location)
    return location


def check_empty(location: Location) -> None:
    """Refuse, with one line and touching nothing, to create a store where something that is not
    a store exists: a file, a non-empty folder or prefix (``--store .``, ``~``, swapped --data)."""
    if location.local is not None and location.local.exists() and not location.local.is_dir():
        raise StoreError(f"{location.url}: exists and is a file, not a radio store; give a new or empty --store")
    if location.local is None:
        bucket = location.root.split("/", 1)[0]
        if not location.bucket_exists():
            raise StoreError(f"{location.url}: no such bucket {bucket!r}")
    held = [e for e in location.entries() if e not in CREATE_IGNORES and not TEMP_NAME.search(e)]
    if held:
        shown = ", ".join(held[:3]) + (f", ... ({len(held)} entries)" if len(held) > 3 else "")
        raise StoreError(
            f"{location.url}: exists and is not a radio store (no zarr.json; it holds {shown}); "
            "nothing was touched: give a new or empty --store"
        )


def settings_json(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as they read back from Zarr attributes (JSON types), for equality checks."""
    return json.loads(json.dumps(settings))
