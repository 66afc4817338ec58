"""Batched, concurrent reads of cached targets through tensorstore.

A worker's batch slice is read at once. ``features`` of an uncompressed local array: each run of
consecutive rows within a shard (a single row in ``sampling: rows``, whole shards in
``blocks``) is one positioned read of the shard file straight into the batch buffer
(:mod:`radio.store.shardread`), runs spread over a small thread pool. Anything else
(compressed arrays, URL stores, a shard with chunks out of order) goes through tensorstore: one
request per row, all in one concurrent ``Batch``. Each key's ``summary`` is one index-array read
(each 64-row summary chunk decoded once per batch, not once per row).

Why tensorstore and not zarr: zarr 3.1's ``oindex`` on sharded arrays walks every element
(9–14x slower than a per-row loop), and its async per-row ``getitem`` measured well below
tensorstore in ``bench/loader_bench.py`` (``zarr_async_rows_per_s``).

Only rows the store marks complete are read, so an absent chunk or shard is an error
(``fill_missing_data_reads: false``; a writer removed it: ``featurize --overwrite``, ``store
compact --drop-raw``), never the fill value; a chunk whose crc32c does not match is one too. Both
reach the caller as one :class:`~radio.store.layout.StoreError` line naming key, tar and shard.

Arrays come back in the store's own dtype (fp16 today, int8 for compact arrays later): the
trainer converts after moving them to the device (:func:`radio.distill.data.on_device`).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from radio.store.checksums import CorruptError, MissingDataError
from radio.store.compact import GROUP as COMPACT
from radio.store.layout import FeatureStore, StoreError
from radio.store.objects import Location, is_url

from .shardread import ShardRuns


def target_array_path(store_path: str | Path, key: str, name: str, compact: bool = False) -> str:
    """Where ``targets/KEY/NAME`` lives (a local path or a URL); with ``compact``, the key's compact
    array of that name (``targets/KEY/compact/NAME``, written by `radio store compact`) when the
    store has one."""
    loc = Location(store_path)
    base = f"targets/{key}"
    if compact and loc.exists(f"{base}/{COMPACT}/{name}/zarr.json"):
        base = f"{base}/{COMPACT}"
    return (
        str(loc.local_path(f"{base}/{name}"))
        if loc.local is not None
        else f"{str(store_path).rstrip('/')}/{base}/{name}"
    )


def kvstore_spec(path: str) -> dict:
    """tensorstore's kvstore for a local path or an ``s3://`` / ``gs://`` URL. S3 credentials come
    from the usual ``AWS_*`` variables; ``AWS_ENDPOINT_URL`` names an S3-compatible server."""
    if not is_url(path):
        return {"driver": "file", "path": path}
    scheme, rest = path.split("://", 1)
    bucket, _, prefix = rest.partition("/")
    if scheme == "s3":
        spec = {
            "driver": "s3",
            "bucket": bucket,
            "path": prefix + "/",
            "aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        }
        if os.environ.get("AWS_ENDPOINT_URL"):
            spec["endpoint"] = os.environ["AWS_ENDPOINT_URL"]
        return spec
    if scheme in ("gs", "gcs"):
        return {"driver": "gcs", "bucket": bucket, "path": prefix + "/"}
    raise ValueError(f"{path}: the trainer reads targets from local paths, s3:// or gs:// URLs")


def open_target_array(store_path: str | Path, key: str, name: str, compact: bool = False) -> ts.TensorStore:
    """Open ``targets/KEY/NAME`` (or its compact array) of a store read-only. The one place a
    store location becomes a kvstore spec."""
    # Absent chunks are errors, not zeros: readers ask only for rows the store marks complete.
    spec = {
        "driver": "zarr3",
        "kvstore": kvstore_spec(target_array_path(store_path, key, name, compact)),
        "fill_missing_data_reads": False,
    }
    return ts.open(spec, read=True, open=True).result()


def _chunk_file(text: str) -> str | None:
    """The chunk file a tensorstore error names (``... in local file "PATH"``, or an object key)."""
    m = re.search(r'(?:file|key|object) "([^"]+)"', text) or re.search(r"\"([^\"]*/c/[^\"]+)\"", text)
    return m.group(1) if m else None


def read_error(store_path: str, key: str, name: str, row: int, error: BaseException) -> StoreError:
    """One line for a failed read of ``row`` of ``targets/KEY/NAME``: which tar and shard, and
    whether it is missing (a writer removed it) or damaged (its crc32c does not match)."""
    text = " ".join(str(error).split())
    shard = _chunk_file(text) if not isinstance(error, StoreError) else text.split(": ")[0]
    try:
        plan = FeatureStore(store_path).plan
        tp = next(t for t in plan.tars if t.row_start <= row < t.row_start + t.rows)
        tar = f"tar {tp.index} ({posixpath.basename(tp.path)})"
    except (StopIteration, StoreError):
        tar = "a tar"
    where = f"{key}: {name} of {tar}, row {row}, shard {shard or '?'}"
    if isinstance(error, MissingDataError) or "NOT_FOUND" in text:
        return MissingDataError(
            f"{where} is missing though the store marks the tar complete (removed by a writer: "
            "featurize --overwrite or store compact --drop-raw?); not training on fill values"
        )
    if isinstance(error, StoreError):
        detail = text.split(": ", 1)[-1]
    else:  # tensorstore's "CODE: ... in local file "PATH": what went wrong": the path is named above
        detail = f"{text.split(':', 1)[0]}: {text.rsplit(': ', 1)[-1]}"
    return CorruptError(f"{where} is damaged ({detail[:160]}); run `radio store verify {store_path}`")


class TargetReader:
    """Reads ``features`` (and ``summary`` where the key has one) of several keys for a set of rows.

    ``read(rows)`` → ``{key: {"features": [B, h, w, C], "summary": [B, Cs]}}`` in the order of
    ``rows``, dtype as stored. Opens its arrays on first use, so forked workers open their own.
    Direct reads land in each row's place of the output; tensorstore's rows too; only the
    summary (``[B, Cs]``, read in row order) is reordered.
    """

    threads = 2  # tasks a large batch's direct reads are split into (they release the GIL)

    def __init__(self, store_path: str | Path, keys: Sequence[tuple[str, bool]], compact: frozenset[str] = frozenset()):
        self.store_path = str(store_path)
        self.keys = list(keys)  # (key, has_summary)
        self.compact = compact  # keys read from their compact arrays (one byte per value)
        self._arrays: dict[tuple[str, str], ts.TensorStore] | None = None
        self._direct: dict[str, ShardRuns | None] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def __getstate__(self) -> dict:  # handles, descriptors and threads are per process
        return {**self.__dict__, "_arrays": None, "_direct": {}, "_pool": None}

    def _open(self) -> dict[tuple[str, str], ts.TensorStore]:
        if self._arrays is None or self._pid != os.getpid():  # tensorstore's threads do not survive a fork
            self._arrays, self._pid = {}, os.getpid()
            for key, summary in self.keys:
                for name in ("features", "summary") if summary else ("features",):
                    self._arrays[(key, name)] = open_target_array(self.store_path, key, name, key in self.compact)
                self._direct[key] = ShardRuns.open(
                    target_array_path(self.store_path, key, "features", key in self.compact)
                )
            self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        return self._arrays

    def read(self, rows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        arrays = self._open()
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # ordered[i] = rows[order[i]]: goes to out[order[i]]
        ordered = rows[order]
        # (out, position, future, key, name, first row); a summary's is (None, key, future, ...)
        pending: list[tuple[np.ndarray | None, Any, Any, str, str, int]] = []
        out: dict[str, dict[str, np.ndarray]] = {}
        with ts.Batch() as batch:
            for key, summary in self.keys:
                a = arrays[(key, "features")]
                feats = np.empty((len(rows), *a.shape[1:]), a.dtype.numpy_dtype)
                out[key] = {"features": feats}
                direct = self._direct[key]
                # an uncompressed local shard: one preadv per run of rows, into the rows' places;
                # otherwise (and for runs the direct reader declines) one tensorstore request per row
                ts_rows = range(len(ordered))
                if direct is not None:
                    try:
                        ts_rows = direct.read_rows(ordered, feats, order, self._pool, self.threads)  # type: ignore[assignment]
                    except StoreError as e:
                        raise read_error(self.store_path, key, "features", getattr(e, "row", -1), e) from None
                pending += [
                    (
                        feats,
                        int(order[i]),
                        a[int(ordered[i]) : int(ordered[i]) + 1].read(batch=batch),
                        key,
                        "features",
                        int(ordered[i]),
                    )
                    for i in ts_rows
                ]
                if summary:
                    pending.append(
                        (
                            None,
                            key,
                            arrays[(key, "summary")][ordered].read(batch=batch),
                            key,
                            "summary",
                            int(ordered[0]) if len(ordered) else 0,
                        )
                    )
        for target, pos, future, key, name, row in pending:
            try:
                data = future.result()
            except ValueError as e:
                file = _chunk_file(str(e))
                if name == "summary" and file is not None and "/c/" in file:  # the damaged chunk's first row
                    chunk_rows = int((arrays[(key, name)].chunk_layout.read_chunk.shape or (1,))[0] or 1)
                    row = int(file.rsplit("/c/", 1)[1].split("/")[0]) * chunk_rows
                raise read_error(self.store_path, key, name, row, e) from None
            if target is None:
                summ = np.empty_like(data)
                summ[order] = data
                out[pos]["summary"] = summ
            else:
                target[pos] = data[0]
        return out
