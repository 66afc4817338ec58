"""Checksums on every stored byte: crc32c on each Zarr chunk, page checksums in parquet.

The one place the store's codec chains are made. Every array of the store (features, summary,
moments, completion markers, compact arrays and codec parameters, normalizers) is created by
:func:`create_array`, which ends the chunk codecs with ``crc32c`` (Zarr v3 ``Crc32cCodec``: 4
bytes after each encoded chunk; in a sharded array it ends the inner chunks' codecs, and the
shard index carries its own). zarr-python and tensorstore verify it on every read; the trainer's
direct ``preadv`` reader verifies it itself (:mod:`radio.store.shardread`). Manifests are
parquet written with page checksums (:func:`parquet_bytes`) and read with their verification
(:func:`read_parquet`).

A read whose bytes do not match, or whose metadata cannot be decoded, raises
:class:`CorruptError`: one line naming the object, never a zarr/numcodecs/pyarrow traceback.
Stores written before this have no chunk checksums and still read (:func:`has_checksums` tells).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import Crc32cCodec, ZstdCodec

from .errors import StoreError

EXIT_DATA = 1  # the run's data is at fault (the CLI's EXIT_FAILED), not the request


class CorruptError(StoreError):
    """Stored bytes that do not match their checksum or cannot be decoded (exit 1: the data is at fault)."""

    exit_code = EXIT_DATA


class MissingDataError(StoreError):
    """Data the store marks complete whose chunk or shard is absent (never read as the fill value)."""

    exit_code = EXIT_DATA


def compressors(compressor: str | Sequence[BytesBytesCodec] | None = None) -> list[BytesBytesCodec]:
    """The chunk's bytes-to-bytes codecs: ``compressor`` (``"zstd"``, ``"none"``/None, or codecs
    copied from another array) then ``crc32c`` last, so the checksum covers the stored bytes."""
    if isinstance(compressor, str) or compressor is None:
        chain: list[BytesBytesCodec] = [ZstdCodec(level=0)] if compressor == "zstd" else []
    else:
        chain = [c for c in compressor if not isinstance(c, Crc32cCodec)]
    return [*chain, Crc32cCodec()]


def create_array(
    group: zarr.Group, name: str, *, compressor: str | Sequence[BytesBytesCodec] | None = None, **kwargs: Any
) -> zarr.Array:
    """``group.create_array(name, ...)`` with the store's codec chain (``compressor`` then crc32c)."""
    return group.create_array(name, compressors=compressors(compressor), **kwargs)


def has_checksums(array: zarr.Array) -> bool:
    """Whether the array's chunks carry crc32c (False for stores written before checksums)."""
    return any(isinstance(c, Crc32cCodec) for c in array.compressors)


def plain_compressors(array: zarr.Array) -> list[BytesBytesCodec]:
    """The array's compressors without crc32c (what :func:`compressors` takes to copy a chain)."""
    return [c for c in array.compressors if isinstance(c, BytesBytesCodec) and not isinstance(c, Crc32cCodec)]


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read(array: zarr.Array, selection: Any = slice(None), what: str | None = None) -> Any:
    """``array[selection]``; damaged chunks (checksum, codec or shard index) → one :class:`CorruptError`
    line naming the array (``what``, default its path in the store)."""
    try:
        return array[selection]
    except (ValueError, RuntimeError, OSError) as e:  # crc32c and shard index: ValueError; zstd: RuntimeError
        raise CorruptError(f"{what or array.path}: stored bytes are damaged ({_short(e)})") from None


def parquet_bytes(table: pa.Table) -> bytes:
    """A parquet file of ``table`` with a crc32 on every page (verified by :func:`read_parquet`)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue().to_pybytes()


def read_parquet(data: bytes, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a manifest, verifying its page checksums (files without them still read); a damaged
    page or footer → one :class:`CorruptError` line naming ``name``."""
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise CorruptError(f"{name}: damaged parquet ({_short(e)})") from None
