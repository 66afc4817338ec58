"""Student pixels in the store: each row's student view at a partition resolution, ready to train.

Phase 2 otherwise decodes a row's full JPEG from its tar, crops and resizes it at every visit
(~260 images/s per core at 256 px). Featurize's CPU stage has the decoded image in hand anyway,
so it can also store the row's *student view* (:func:`radio.shards.views.student_view`) at each
partition resolution ``R`` of the pipeline's stages, in one of two modes:

    pixels/R/                    one group per resolution; attributes: mode, resolution, quality,
                                 view, capacity, code_version (:class:`PixelSpec`)
        view  raw:  [rows, 3, R, R] uint8 (channels first, as the trainer's batch), chunk 1 row,
                    shard shard_rows rows, uncompressed
              jpeg: [rows, 4 + capacity] uint8, chunk 1 row, shard shard_rows rows, zstd: a
                    little-endian uint32 byte count, the JPEG, then zeros (an invalid row: 0 bytes)
        complete  [T] uint8      completion marker per tar, written after every shard of the tar
                                 and after its manifest

Why a padded fixed-size row and not a bytes array plus offsets: the rows of a store are planned
before any worker starts and every write is one whole Zarr shard (DESIGN.md §3). A global bytes
array would need its offsets before the JPEGs exist, or a second, append-style write path; a
fixed row of ``4 + capacity`` bytes keeps the targets' layout (row ``i`` is chunk ``i``, a shard
is written whole, a resumed run rewrites the same bytes), and zstd turns the zero padding into a
few bytes, so the disk holds about the JPEG's own size. Raw views are stored channels first, the
layout of the trainer's ``[B, 3, R, R]`` batch, so a read lands in the batch with no transpose. ``capacity`` is ``3 R² + 4096``: a 4:2:0
JPEG of an ``R``×``R`` RGB image at quality ≤ 95 stays below its raw size (1.5 coefficients per
pixel); a larger one is refused with one line, never cut. Raw rows are stored uncompressed, so
the trainer reads a run of them with one ``preadv`` (:mod:`radio.store.shardread`).

Every chunk ends in a crc32c (:mod:`.checksums`), so `radio store verify` checks these arrays as
it checks targets. No pickles: JPEG bytes and uint8 only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import numpy as np
import tensorstore as ts
import zarr
from PIL import Image

from . import checksums
from .layout import FeatureStore
from .objects import Location, StoreError
from .shardread import ShardRuns

PixelMode = Literal["jpeg", "raw"]
MODES = ("jpeg", "raw")
GROUP = "pixels"
VIEW = "crop_resize/1"  # what a stored row is: radio.shards.views.student_view's output, version 1
CODE_VERSION = "radio-pixels/1"
HEADER = 4  # bytes of the uint32 JPEG length at the start of a jpeg row
SUBSAMPLING = 2  # PIL's 4:2:0 (the bound on a JPEG's size above assumes it)


def jpeg_capacity(resolution: int) -> int:
    """The most JPEG bytes a row at ``resolution`` holds: the raw view's size plus 4 KB of headers."""
    return 3 * resolution * resolution + 4096


@dataclass(frozen=True)
class PixelSpec:
    """What ``pixels/R`` holds (its group attributes)."""

    mode: str  # "jpeg" or "raw"
    resolution: int
    quality: int | None = None  # JPEG quality (jpeg mode)
    view: str = VIEW
    code_version: str = CODE_VERSION

    @property
    def capacity(self) -> int:
        """Bytes of one row of ``view`` after its header (jpeg) or of the view itself (raw)."""
        return jpeg_capacity(self.resolution) if self.mode == "jpeg" else 3 * self.resolution**2

    def record(self) -> dict[str, Any]:
        return asdict(self) | {"capacity": self.capacity}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> PixelSpec:
        return cls(attrs["mode"], int(attrs["resolution"]), attrs.get("quality"), attrs["view"], attrs["code_version"])


def _groups(store: FeatureStore) -> zarr.Group | None:
    """The store's ``pixels`` group, or None (zarr types a member as ``Array | Group``)."""
    return cast(zarr.Group, store.root[GROUP]) if GROUP in store.root else None


def _group(store: FeatureStore, resolution: int) -> zarr.Group:
    groups = _groups(store)
    assert groups is not None  # callers ask only for planned resolutions
    return cast(zarr.Group, groups[str(resolution)])


def _array(store: FeatureStore, resolution: int, name: str) -> zarr.Array:
    return cast(zarr.Array, _group(store, resolution)[name])


def pixel_resolutions(store: FeatureStore) -> list[int]:
    """Resolutions the store holds student pixels at (stores before issue 27: none)."""
    groups = _groups(store)
    return [] if groups is None else sorted(int(k) for k in groups.group_keys())


def pixel_spec(store: FeatureStore, resolution: int) -> PixelSpec:
    return PixelSpec.from_attrs(dict(_group(store, resolution).attrs))


def pixels_completed(store: FeatureStore, resolution: int) -> np.ndarray:
    """``[T] bool``: which tars hold their student pixels at ``resolution``."""
    a = _array(store, resolution, "complete")
    return checksums.read(a, slice(None), f"{store.path}: {GROUP}/{resolution}/complete").astype(bool)


def create_pixels(store: FeatureStore, spec: PixelSpec, overwrite: bool = False) -> None:
    """Pre-allocate ``pixels/R`` for ``spec`` (driver only). An existing group must hold the same
    spec; one with another spec is re-planned when no tar is complete (nothing is lost) or with
    ``overwrite``, and refused in one line otherwise."""
    found = _groups(store)
    groups = store.root.create_group(GROUP) if found is None else found  # (an empty Group is falsy)
    name = str(spec.resolution)
    if name in groups:
        old = dict(_group(store, spec.resolution).attrs)
        if old == spec.record():
            return
        if not overwrite and pixels_completed(store, spec.resolution).any():
            changed = sorted(k for k in old.keys() | spec.record().keys() if old.get(k) != spec.record().get(k))
            raise StoreError(
                f"{store.path}: student pixels at {spec.resolution} px exist with other settings "
                f"({', '.join(changed)}); pass --overwrite to rewrite them"
            )
        store.location.remove_prefix(f"{GROUP}/{name}")
        store.root = store._open_root()
        groups = cast(zarr.Group, store.root[GROUP])
    g = groups.create_group(name, attributes=spec.record())
    n, t, r = store.plan.total_rows, len(store.plan.tars), store.plan.shard_rows
    s = spec.resolution
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    names: tuple[str, ...]
    if spec.mode == "raw":  # uncompressed: a run of rows is one preadv (shardread)
        shape, chunks, compressor, names = (n, 3, s, s), (1, 3, s, s), "none", ("row", "channel", "y", "x")
    else:  # zstd folds the zero padding after each JPEG into a few bytes
        row = HEADER + spec.capacity
        shape, chunks, compressor, names = (n, row), (1, row), "zstd", ("row", "byte")
    checksums.create_array(
        g,
        "view",
        shape=shape,
        dtype="uint8",
        chunks=chunks,
        shards=(r, *chunks[1:]),
        compressor=compressor,
        fill_value=0,
        dimension_names=names,
    )
    checksums.create_array(g, "complete", shape=(t,), dtype="uint8", chunks=(1,), fill_value=0)


# ---- encoding -----------------------------------------------------------------------------------


def encode_jpeg(view: np.ndarray, quality: int) -> bytes:
    """``[R, R, 3] uint8`` → JPEG bytes (4:2:0, baseline; deterministic for equal input)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(view)).save(buf, "JPEG", quality=quality, subsampling=SUBSAMPLING)
    return buf.getvalue()


def decode_jpeg_pil(data: bytes | np.ndarray) -> np.ndarray:
    """JPEG bytes → ``[R, R, 3] uint8`` with PIL (tools and tests; the trainer decodes with
    :func:`radio.distill.pixels.decode_views`)."""
    with Image.open(io.BytesIO(bytes(data))) as im:
        return np.asarray(im.convert("RGB"))


def encode_rows(spec: PixelSpec, views: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``views [n, R, R, 3] uint8`` (invalid rows ignored) → the rows of ``pixels/R/view``."""
    if spec.mode == "raw":  # channels first
        return np.ascontiguousarray(
            np.where(valid[:, None, None, None], views, 0).astype(np.uint8).transpose(0, 3, 1, 2)
        )
    out = np.zeros((len(views), HEADER + spec.capacity), np.uint8)
    assert spec.quality is not None  # jpeg mode records its quality
    for i in np.flatnonzero(valid):
        data = encode_jpeg(views[i], spec.quality)
        if len(data) > spec.capacity:
            raise StoreError(
                f"a {spec.resolution} px JPEG of {len(data)} bytes exceeds the row's {spec.capacity}; "
                "use student_pixels: raw"
            )
        out[i, :HEADER] = np.frombuffer(len(data).to_bytes(HEADER, "little"), np.uint8)
        out[i, HEADER : HEADER + len(data)] = np.frombuffer(data, np.uint8)
    return out


def write_pixel_shard(store: FeatureStore, resolution: int, row_start: int, rows: np.ndarray) -> None:
    """Write one whole Zarr shard of encoded rows (:func:`encode_rows`) of ``pixels/R/view``."""
    r = store.plan.shard_rows
    if row_start % r or rows.shape[0] != r:
        raise ValueError(f"write_pixel_shard takes whole shards: rows {row_start}..+{rows.shape[0]} of {r}")
    _array(store, resolution, "view")[row_start : row_start + r] = rows


def mark_pixels_complete(store: FeatureStore, resolution: int, tar_index: int) -> None:
    """The tar's pixel marker at ``resolution``: written after all its shards and its manifest."""
    _array(store, resolution, "complete")[tar_index] = 1


def mark_pixels_incomplete(store: FeatureStore, resolution: int, tars: Sequence[int]) -> None:
    """Clear the tars' pixel markers, so the next add-pixels (or featurize) rewrites them."""
    for t in tars:
        _array(store, resolution, "complete")[t] = 0


# ---- reading ------------------------------------------------------------------------------------


def view_array_path(store_path: str, resolution: int) -> str:
    loc = Location(store_path)
    name = f"{GROUP}/{resolution}/view"
    return str(loc.local_path(name)) if loc.local is not None else f"{str(store_path).rstrip('/')}/{name}"


class StoredPixels:
    """Reads stored student views of one resolution; opens lazily (each DataLoader worker its own).

    :meth:`read` ``(rows)`` → raw mode: ``[B, 3, R, R] uint8`` (into ``out`` when given); jpeg
    mode: ``B`` 1-D uint8 arrays (each row's JPEG bytes). Only rows of tars in :attr:`complete` may be asked for.
    """

    def __init__(self, store_path: str, resolution: int, spec: PixelSpec, complete: np.ndarray):
        self.store_path, self.resolution, self.spec, self.complete = store_path, resolution, spec, complete
        self._array: ts.TensorStore | None = None
        self._direct: ShardRuns | None = None
        self._pid = 0

    @classmethod
    def open(cls, store: FeatureStore, resolution: int) -> StoredPixels | None:
        """The store's pixels at ``resolution`` (None when it has none there or none complete)."""
        if resolution not in pixel_resolutions(store):
            return None
        done = pixels_completed(store, resolution)
        if not done.any():
            return None
        return cls(str(store.path), resolution, pixel_spec(store, resolution), done)

    def __getstate__(self) -> dict:  # handles are per process
        return {**self.__dict__, "_array": None, "_direct": None, "_pid": 0}

    def _open(self) -> ts.TensorStore:
        if self._array is None or self._pid != os.getpid():
            from .targets import kvstore_spec

            path = view_array_path(self.store_path, self.resolution)
            spec = {"driver": "zarr3", "kvstore": kvstore_spec(path), "fill_missing_data_reads": False}
            self._array = ts.open(spec, read=True, open=True).result()
            self._direct = ShardRuns.open(path) if self.spec.mode == "raw" else None
            self._pid = os.getpid()
        return self._array

    def read(self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray | list[np.ndarray]:
        a = self._open()
        rows = np.asarray(rows, dtype=np.int64)
        try:
            if self.spec.mode == "raw":
                s = self.resolution
                out = np.empty((len(rows), 3, s, s), np.uint8) if out is None else out
                # the whole batch in one call: one preadv per run of consecutive rows, straight into out
                order = np.argsort(rows, kind="stable")
                if self._direct is not None and out.flags.c_contiguous:
                    other = [int(order[i]) for i in self._direct.read_rows(rows[order], out, order)]
                else:
                    other = list(range(len(rows)))
                for i in other:  # an absent chunk or another layout: through tensorstore
                    out[i] = a[int(rows[i])].read().result()
                return out
            with ts.Batch() as batch:
                futures = [a[r].read(batch=batch) for r in rows.tolist()]
            blobs = []
            for f in futures:
                row = f.result()
                n = int.from_bytes(row[:HEADER].tobytes(), "little")
                blobs.append(row[HEADER : HEADER + n])
            return blobs
        except (StoreError, ValueError) as e:
            raise checksums.CorruptError(
                f"{self.store_path}: {GROUP}/{self.resolution}/view: {' '.join(str(e).split())[:160]}; "
                f"run `radio store verify {self.store_path}`"
            ) from None


__all__ = [
    "GROUP",
    "MODES",
    "PixelSpec",
    "StoredPixels",
    "create_pixels",
    "decode_jpeg_pil",
    "encode_jpeg",
    "encode_rows",
    "jpeg_capacity",
    "mark_pixels_complete",
    "mark_pixels_incomplete",
    "pixel_resolutions",
    "pixel_spec",
    "pixels_completed",
    "write_pixel_shard",
]
