"""Direct reads of row runs from uncompressed, sharded Zarr v3 feature arrays.

``sampling: blocks`` asks for whole runs of consecutive rows. Through tensorstore, rows of one
shard are served one after another (~0.4 of a raw read here); but a run of rows of one shard is
one contiguous byte range of its shard file, so it is read with one ``preadv`` straight into
the batch buffer. The shard's chunk index (Zarr v3 ``sharding_indexed``: ``[n, 2]`` uint64
offset/size at the end of the file, then its crc32c) says where the range lies; an index that
is not in order or an absent inner chunk sends the run back to tensorstore.

Only local, uncompressed ``features`` arrays with one row per inner chunk qualify
(:meth:`ShardRuns.open` returns None otherwise): inner codecs ``bytes`` (stores written before
checksums) or ``bytes`` + ``crc32c`` (each inner chunk is the row's bytes then 4 bytes of
crc32c, :mod:`radio.store.checksums`). With crc32c, the run is read with one ``preadv`` into
alternating buffers (row, its 4 checksum bytes) and every row is verified with a hardware
crc32c (``google_crc32c``). The index's own crc32c is checked once per shard. A damaged row or
index raises :class:`~radio.store.checksums.CorruptError`; an absent shard file raises
:class:`~radio.store.checksums.MissingDataError` (the caller reads only rows the store marks
complete, so an absent shard is a writer removing it, never zeros to train on).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import google_crc32c
import numpy as np

from radio.store.checksums import CorruptError, MissingDataError

EMPTY = np.uint64(2**64 - 1)
BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
CRC = {"name": "crc32c"}
IOV_ROWS = 256  # rows per preadv with checksums: 2 buffers a row, under Linux's IOV_MAX (1024)
CACHE_BYTES = 1 << 20  # rows read per preadv are checked while in cache: ~1 MB (a 16x16x1280 fp16 row is 655 KB)


def _crc(data: np.ndarray) -> int:
    """crc32c of a contiguous uint8 array (google_crc32c takes numpy arrays without a copy)."""
    return int(google_crc32c.value(data))


class ShardRuns:
    """Reads ``[start, stop)`` rows of one array into a caller's buffer (``[stop-start, ...]``)."""

    def __init__(
        self,
        path: Path,
        shard_rows: int,
        row_shape: tuple[int, ...],
        dtype: np.dtype,
        max_index: int = 4096,
        crc: bool = False,
    ):
        self.path, self.shard_rows, self.row_shape, self.dtype = path, shard_rows, row_shape, dtype
        self.row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        self.crc = crc  # inner chunks are row bytes + 4 bytes of crc32c
        self.chunk_bytes = self.row_bytes + (4 if crc else 0)
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
        # one-byte types (int8 compact arrays) are written without an endian: the same bytes
        inner_codecs = [BYTES if c == {"name": "bytes"} else c for c in conf["codecs"]]
        if (
            inner_codecs not in ([BYTES], [BYTES, CRC])
            or conf.get("index_codecs", [BYTES, CRC]) != [BYTES, CRC]
            or conf.get("index_location", "end") != "end"
            or inner[0] != 1
            or inner[1:] != outer[1:]
            or meta["chunk_key_encoding"]["name"] != "default"
            or meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") != "/"
        ):
            return None
        return cls(
            path,
            outer[0],
            tuple(inner[1:]),
            np.dtype(meta["data_type"]).newbyteorder("<"),
            crc=inner_codecs == [BYTES, CRC],
        )

    def _shard_file(self, shard: int) -> Path:
        return self.path / "c" / str(shard) / Path(*["0"] * len(self.row_shape))

    def _chunk_index(self, fd: int, shard: int) -> np.ndarray:
        """``[shard_rows, 2]`` uint64 (offset, nbytes) of the shard's chunks, its crc32c checked;
        cached (a complete shard never changes)."""
        idx = self._index.get(shard)
        if idx is None:
            n = self.shard_rows * 16
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n + 4, max(0, size - n - 4))  # the index, then its 4-byte crc32c
            if len(raw) != n + 4 or _crc(np.frombuffer(raw, np.uint8, n)) != int.from_bytes(raw[n:], "little"):
                raise CorruptError(f"{self._shard_file(shard)}: shard index does not match its crc32c")
            idx = np.frombuffer(raw, "<u8", n // 8).reshape(self.shard_rows, 2)
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
            raise MissingDataError(f"{self._shard_file(shard)}: shard is missing") from None
        try:
            idx = self._chunk_index(fd, shard)[first : first + stop - start]
            offsets, sizes = idx[:, 0], idx[:, 1]
            expected = offsets[0] + np.arange(len(idx), dtype=np.uint64) * np.uint64(self.chunk_bytes)
            if (offsets == EMPTY).any() or (sizes != self.chunk_bytes).any() or (offsets != expected).any():
                return False
            rows = out.view(np.uint8).reshape(len(idx), self.row_bytes)
            if not self.crc:
                # numpy's stubs give ndarray __buffer__ only for Python >= 3.12 (mypy checks 3.11)
                view = memoryview(rows.reshape(-1))  # type: ignore[arg-type]
                return os.preadv(fd, [view], int(offsets[0])) == view.nbytes
            return self._read_checked(fd, shard, first, int(offsets[0]), rows)
        finally:
            os.close(fd)

    def _read_checked(self, fd: int, shard: int, first: int, offset: int, rows: np.ndarray) -> bool:
        """Rows ``[k, row_bytes]`` and their stored crc32c, one ``preadv`` per group of rows that fits
        in a core's cache, each group verified right after it is read (while its bytes are hot)."""
        stored = np.empty((len(rows), 4), np.uint8)
        want = stored.view("<u4").reshape(-1)
        group = max(1, min(IOV_ROWS, CACHE_BYTES // self.chunk_bytes))
        for a in range(0, len(rows), group):
            b = min(a + group, len(rows))
            bufs = [memoryview(x) for i in range(a, b) for x in (rows[i], stored[i])]
            if os.preadv(fd, bufs, offset + a * self.chunk_bytes) != (b - a) * self.chunk_bytes:
                return False
            for i in range(a, b):
                if _crc(rows[i]) != int(want[i]):
                    raise CorruptError(
                        f"{self._shard_file(shard)}: row {shard * self.shard_rows + first + i} "
                        "does not match its crc32c"
                    )
        return True
