"""Direct reads of row runs from uncompressed, sharded Zarr v3 feature arrays.

``sampling: blocks`` asks for whole runs of consecutive rows. Through tensorstore, rows of one
shard are served one after another (~0.4 of a raw read here); but a run of rows of one shard is
one contiguous byte range of its shard file, so it is read with one ``preadv`` straight into
the batch buffer. The shard's chunk index (Zarr v3 ``sharding_indexed``: ``[n, 2]`` uint64
offset/size at the end of the file) says where the range lies; an index that is not in order,
an absent chunk or any codec beyond ``bytes`` sends the run back to tensorstore.

Only local, uncompressed ``features`` arrays with one row per inner chunk qualify
(:meth:`ShardRuns.open` returns None otherwise). The crc32c of the index is not checked here.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

EMPTY = np.uint64(2**64 - 1)


class ShardRuns:
    """Reads ``[start, stop)`` rows of one array into a caller's buffer (``[stop-start, ...]``)."""

    def __init__(self, path: Path, shard_rows: int, row_shape: tuple[int, ...], dtype: np.dtype, max_index: int = 4096):
        self.path, self.shard_rows, self.row_shape, self.dtype = path, shard_rows, row_shape, dtype
        self.row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        self._index: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_index = max_index

    @classmethod
    def open(cls, array_path: str | Path) -> ShardRuns | None:
        path = Path(array_path)
        if "://" in str(array_path) or not (path / "zarr.json").is_file():
            return None
        meta = json.loads((path / "zarr.json").read_text())
        codecs = meta.get("codecs", [])
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner, outer = conf["chunk_shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        little = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if (conf["codecs"] != little or conf.get("index_location", "end") != "end" or inner[0] != 1
                or inner[1:] != outer[1:] or meta["chunk_key_encoding"]["name"] != "default"
                or meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") != "/"):  # fmt: skip
            return None
        return cls(path, outer[0], tuple(inner[1:]), np.dtype(meta["data_type"]).newbyteorder("<"))

    def _shard_file(self, shard: int) -> Path:
        return self.path / "c" / str(shard) / Path(*["0"] * len(self.row_shape))

    def _chunk_index(self, fd: int, shard: int) -> np.ndarray:
        """``[shard_rows, 2]`` uint64 (offset, nbytes) of the shard's chunks; cached (a complete
        shard never changes)."""
        idx = self._index.get(shard)
        if idx is None:
            n = self.shard_rows * 16
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n, size - n - 4)  # the index, then its 4-byte crc32c
            idx = np.frombuffer(raw, "<u8").reshape(self.shard_rows, 2)
            self._index[shard] = idx
            if len(self._index) > self.max_index:
                self._index.popitem(last=False)
        return idx

    def read(self, start: int, stop: int, out: np.ndarray) -> bool:
        """Fill ``out`` with rows ``[start, stop)`` of one shard; False if the run must go another way."""
        shard, first = divmod(start, self.shard_rows)
        if (stop - 1) // self.shard_rows != shard or not out.flags.c_contiguous:
            return False
        try:
            fd = os.open(self._shard_file(shard), os.O_RDONLY)
        except FileNotFoundError:
            return False  # a missing shard is all fill value: let tensorstore say so
        try:
            idx = self._chunk_index(fd, shard)[first : first + stop - start]
            offsets, sizes = idx[:, 0], idx[:, 1]
            expected = offsets[0] + np.arange(len(idx), dtype=np.uint64) * np.uint64(self.row_bytes)
            if (offsets == EMPTY).any() or (sizes != self.row_bytes).any() or (offsets != expected).any():
                return False
            # numpy's stubs give ndarray __buffer__ only for Python >= 3.12 (mypy checks 3.11)
            view = memoryview(out.view(np.uint8).reshape(-1))  # type: ignore[arg-type]
            got = os.preadv(fd, [view], int(offsets[0]))
            return got == view.nbytes
        finally:
            os.close(fd)
