"""Direct reads of target rows from uncompressed, sharded Zarr v3 feature arrays.

A run of consecutive rows of one shard is one contiguous byte range of its shard file. The
shard's chunk index (Zarr v3 ``sharding_indexed``: ``[n, 2]`` uint64 offset/size at the end of
the file, then its crc32c) says where the range lies; an index that is not in order or an
absent inner chunk sends the run back to tensorstore.

:meth:`ShardRuns.read_rows` reads a batch's rows straight into their places in the caller's
output (no reordering copy afterwards): one ``preadv`` per run, its buffers the output rows
wherever they sit. What a read costs beside the copy, and why each part is so:

- shard files stay open in a bounded LRU cache of file descriptors (``max_files``; the oldest
  closes first), so a run costs no ``open``/``close`` and no path is built per run. The cache
  belongs to one process: after a fork (or in a forkserver worker) a new pid closes the
  inherited descriptors and opens its own.
- each shard's index is read and checked once (a complete shard never changes).
- no thread-pool task per row: a batch is split into one task per thread (``preadv`` and crc32c
  release the GIL), each a slice of its runs; a small batch is read in the caller's thread.

Only local, uncompressed ``features`` arrays with one row per inner chunk qualify
(:meth:`ShardRuns.open` returns None otherwise): inner codecs ``bytes`` (stores written before
checksums) or ``bytes`` + ``crc32c`` (each inner chunk is the row's bytes then 4 bytes of
crc32c, :mod:`radio.store.checksums`). With crc32c, a run is read with one ``preadv`` into
alternating buffers (row, its 4 checksum bytes) per ~1 MB, and every row is verified with a
hardware crc32c (``google_crc32c``) right after, while its bytes are in cache. The index's own
crc32c is checked once per shard. A damaged row or index raises
:class:`~radio.store.checksums.CorruptError`; an absent shard file raises
:class:`~radio.store.checksums.MissingDataError` (the caller reads only rows the store marks
complete, so an absent shard is a writer removing it, never zeros to train on).

A descriptor keeps the file it opened: a shard a writer replaces while this process has it open
reads as it was (its own bytes and checksums) until the descriptor is evicted.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np

from radio.store.checksums import CorruptError, MissingDataError
from radio.store.errors import StoreError

EMPTY = np.uint64(2**64 - 1)
BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
CRC = {"name": "crc32c"}
IOV_ROWS = 256  # rows per preadv with checksums: 2 buffers a row, under Linux's IOV_MAX (1024)
CACHE_BYTES = 1 << 20  # rows read per preadv are checked while in cache: ~1 MB (a 16x16x1280 fp16 row is 655 KB)
SPLIT_BYTES = 8 << 20  # a batch under this is read in the caller's thread (a task costs ~50 us)
MAX_FILES = 256  # open shard files per array and process (a DataLoader worker reads several arrays)


def _crc(data: np.ndarray) -> int:
    """crc32c of a contiguous uint8 array (google_crc32c takes numpy arrays without a copy)."""
    return int(google_crc32c.value(data))


class ShardRuns:
    """Reads rows of one array into a caller's buffers: :meth:`read_rows` for a batch,
    :meth:`read` for one run ``[start, stop)`` into ``out`` (``[stop-start, ...]``)."""

    def __init__(
        self,
        path: Path,
        shard_rows: int,
        row_shape: tuple[int, ...],
        dtype: np.dtype,
        max_index: int = 4096,
        crc: bool = False,
        max_files: int = MAX_FILES,
    ):
        self.path, self.shard_rows, self.row_shape, self.dtype = path, shard_rows, row_shape, dtype
        self.row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        self.crc = crc  # inner chunks are row bytes + 4 bytes of crc32c
        self.chunk_bytes = self.row_bytes + (4 if crc else 0)
        self._index: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_index = max_index
        # shard file = PREFIX + shard + SUFFIX (c/<shard>/0/0/0 for [rows, h, w, C]): one f-string per open
        self._prefix, self._suffix = f"{path}/c/", "/0" * len(row_shape)
        self.max_files = max_files
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> fd, least recently used first
        self._pid = os.getpid()

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

    def shard_file(self, shard: int) -> str:
        return f"{self._prefix}{shard}{self._suffix}"

    # -- the descriptor cache -------------------------------------------------------------------

    def _fd(self, shard: int) -> int:
        """The open shard file (opened on a miss); eviction waits for :meth:`_trim`, so every
        descriptor a batch looked up stays open until the batch is read."""
        if self._pid != os.getpid():  # a forked child: the inherited descriptors are the parent's files
            self.close()
            self._pid = os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            try:
                fd = os.open(self.shard_file(shard), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise MissingDataError(f"{self.shard_file(shard)}: shard is missing") from None
            self._files[shard] = fd
        else:
            self._files.move_to_end(shard)
        return fd

    def _trim(self) -> None:
        while len(self._files) > self.max_files:
            os.close(self._files.popitem(last=False)[1])

    def open_files(self) -> int:
        """How many shard files this process holds open."""
        return len(self._files) if self._pid == os.getpid() else 0

    def close(self) -> None:
        """Close every cached descriptor (another pid's are closed in this process only)."""
        while self._files:
            try:
                os.close(self._files.popitem()[1])
            except OSError:  # already closed (a child that closed its inherited fds by hand)
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown: os may be gone
            pass

    def __getstate__(self) -> dict:  # descriptors are per process
        return {**self.__dict__, "_files": OrderedDict(), "_pid": 0}

    # -- reads --------------------------------------------------------------------------------

    def _chunk_index(self, fd: int, shard: int) -> np.ndarray:
        """``[shard_rows, 2]`` uint64 (offset, nbytes) of the shard's chunks, its crc32c checked;
        cached (a complete shard never changes)."""
        idx = self._index.get(shard)
        if idx is None:
            n = self.shard_rows * 16
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n + 4, max(0, size - n - 4))  # the index, then its 4-byte crc32c
            if len(raw) != n + 4 or _crc(np.frombuffer(raw, np.uint8, n)) != int.from_bytes(raw[n:], "little"):
                raise CorruptError(f"{self.shard_file(shard)}: shard index does not match its crc32c")
            idx = np.frombuffer(raw, "<u8", n // 8).reshape(self.shard_rows, 2)
            self._index[shard] = idx
            if len(self._index) > self.max_index:
                self._index.popitem(last=False)
        return idx

    def read_rows(
        self,
        rows: np.ndarray,
        out: np.ndarray,
        positions: np.ndarray,
        pool: ThreadPoolExecutor | None = None,
        tasks: int = 2,
    ) -> list[int]:
        """Read sorted ``rows`` (``[n]`` int64) into ``out[positions[i]]`` (``out``: ``[B, *row_shape]``,
        C-contiguous). Returns the indices ``i`` whose rows must go another way (an absent inner
        chunk, chunks out of order): the caller reads those through tensorstore. With ``pool``, a
        batch over ``SPLIT_BYTES`` is read as ``tasks`` tasks, each a slice of its runs."""
        if not len(rows):
            return []
        rows_u8 = out.view(np.uint8).reshape(len(out), self.row_bytes)
        shards, firsts = np.divmod(rows, self.shard_rows)
        try:
            fds: dict[int, int] = {}
            offsets = np.empty(len(rows), np.uint64)
            sizes = np.empty(len(rows), np.uint64)
            for s in np.unique(shards).tolist():
                sel = shards == s
                try:
                    fds[s] = fd = self._fd(s)
                    idx = self._chunk_index(fd, s)[firsts[sel]]
                except StoreError as e:
                    e.row = int(rows[sel][0])  # type: ignore[attr-defined]  # the caller names the tar
                    raise
                offsets[sel], sizes[sel] = idx[:, 0], idx[:, 1]
            bad = (offsets == EMPTY) | (sizes != self.chunk_bytes)
            # a run: the next row of the same shard, whose chunk follows this one in the file
            cont = (
                (np.diff(rows) == 1)
                & (shards[1:] == shards[:-1])
                & (offsets[1:] == offsets[:-1] + np.uint64(self.chunk_bytes))
                & ~bad[1:]
                & ~bad[:-1]
            )
            starts = np.concatenate([[0], np.flatnonzero(~cont) + 1])
            stops = np.concatenate([starts[1:], [len(rows)]])
            spans = list(zip(starts.tolist(), stops.tolist()))

            def part(spans: list[tuple[int, int]]) -> list[int]:
                other: list[int] = []
                for a, b in spans:
                    s = int(shards[a])
                    if bad[a] or not self._read_run(fds[s], s, rows, a, b, int(offsets[a]), rows_u8, positions):
                        other.extend(range(a, b))
                return other

            if pool is None or len(spans) < 2 or len(rows) * self.row_bytes < SPLIT_BYTES:
                return part(spans)
            # a few tasks of consecutive runs (not one per row): the copies and checks of a large
            # batch overlap on several cores; descriptors are looked up above, in this thread
            k = min(len(spans), tasks)
            cuts = np.searchsorted(starts, np.linspace(0, len(rows), k + 1)[1:-1]).tolist()
            groups = [spans[i:j] for i, j in zip([0, *cuts], [*cuts, len(spans)]) if j > i]
            return [i for f in [pool.submit(part, g) for g in groups] for i in f.result()]
        finally:
            self._trim()

    def _read_run(
        self,
        fd: int,
        shard: int,
        rows: np.ndarray,
        a: int,
        b: int,
        offset: int,
        out: np.ndarray,
        positions: np.ndarray,
    ) -> bool:
        """Rows ``a..b`` of ``rows`` (one run in the file from ``offset``) into ``out[positions]``
        (``out``: ``[B, row_bytes]`` uint8); with crc32c, one ``preadv`` per group of rows that fits in
        a core's cache, each group verified right after it is read (while its bytes are hot)."""
        if not self.crc:
            bufs = [memoryview(out[p]) for p in positions[a:b].tolist()]
            return os.preadv(fd, bufs, offset) == (b - a) * self.row_bytes
        stored = np.empty((b - a, 4), np.uint8)
        want = stored.view("<u4").reshape(-1)
        group = max(1, min(IOV_ROWS, CACHE_BYTES // self.chunk_bytes))
        pos = positions[a:b].tolist()
        for g in range(0, b - a, group):
            h = min(g + group, b - a)
            bufs = [memoryview(x) for i in range(g, h) for x in (out[pos[i]], stored[i])]
            if os.preadv(fd, bufs, offset + g * self.chunk_bytes) != (h - g) * self.chunk_bytes:
                return False
            for i in range(g, h):
                if _crc(out[pos[i]]) != int(want[i]):
                    e = CorruptError(f"{self.shard_file(shard)}: row {int(rows[a + i])} does not match its crc32c")
                    e.row = int(rows[a + i])  # type: ignore[attr-defined]
                    raise e
        return True

    def read(self, start: int, stop: int, out: np.ndarray) -> bool:
        """Fill ``out`` with rows ``[start, stop)`` of one shard; False if the run must go another way."""
        if (stop - 1) // self.shard_rows != start // self.shard_rows or not out.flags.c_contiguous:
            return False
        n = stop - start
        return not self.read_rows(np.arange(start, stop, dtype=np.int64), out, np.arange(n))
