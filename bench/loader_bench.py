"""Loader benchmark: phase 2's target reads at real sizes, against a raw read of the same bytes.

Builds a store through the project's own `FeatureStore` API with
  - a 16x16x1280 fp16 key plus its 1280-wide summary (655 KB a row, like DFN CLIP-H at 224), and
  - a 64x64x1280 fp16 key (10.5 MB a row, like SAM-H at 1024),
then times, in one run and one process:
  - the loader's target reads (`TargetReader`, what `PartitionRows.__getitems__` calls) of
    random batches in `sampling: rows` mode and in `sampling: blocks` mode,
  - zarr's async API reading the same rows (the alternative to tensorstore),
  - a raw read of the same bytes: `open().read()` of the shard files (warm page cache), and the
    same files read into one reused buffer (`raw_into`: no fresh pages, the memory-speed bound),
    alternating with the reader's rows mode,
  - the same three after evicting the files from the page cache (`posix_fadvise(DONTNEED)`
    before each pass: `cold_*`), so both the memory limit and the disk limit show,
  - the cost of checksums: the 16x16 key's features with crc32c (every array the store writes
    has it) against the same rows in the layout before checksums (`clip_nocrc`: bytes only),
    both read through the trainer's reader, rows and blocks mode (`crc_ratio_*` = with / without).
Ratios are per process, measured back to back, so a shared CPU hurts both sides alike.
It also opens a synthetic 10M-row columnar manifest in a fresh process (as a DataLoader worker
does), serves a batch's images' lookups, and reports the resident memory that cost.

    .venv/bin/python bench/loader_bench.py [--rows 512] [--big-rows 64] [--batch 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from radio.distill.data import EpochOrder
from radio.store import checksums
from radio.store.layout import FeatureStore, Plan
from radio.store.manifest import Manifest
from radio.store.targets import TargetReader

SHARD_ROWS = 64


def build_store(path: Path, rows: int, big_rows: int, compressor: str) -> FeatureStore:
    """A store of ``rows`` rows (one fake tar per shard); ``big`` holds only its first ``big_rows``."""
    plan = Plan.build(
        [(f"/nonexistent/{i:05d}.tar", 0, SHARD_ROWS, None) for i in range(rows // SHARD_ROWS)], SHARD_ROWS
    )
    store = FeatureStore.create(path, plan, {"bench": True})
    store.create_target(
        "clip", grid=(16, 16), feature_dim=1280, summary_dim=1280, provenance={"k": 1}, compressor=compressor
    )
    store.create_target(
        "sam", grid=(64, 64), feature_dim=1280, summary_dim=None, provenance={"k": 2}, compressor=compressor
    )
    # The same key compacted to int8 (`radio store compact` layout: targets/clip/compact/features,
    # 1-row chunks in 64-row shards, the raw arrays' compressor and crc32c), to show reads scale with bytes.
    compressors = [zarr.codecs.ZstdCodec(level=0)] if compressor == "zstd" else None
    int8 = checksums.create_array(
        store.root["targets"]["clip"].create_group("compact"),
        "features",
        shape=(plan.total_rows, 16, 16, 1280),
        dtype="int8",
        chunks=(1, 16, 16, 1280),
        shards=(SHARD_ROWS, 16, 16, 1280),
        compressor=compressor,
        fill_value=0,
    )
    # The same features as stores wrote them before checksums (inner codecs: bytes only).
    nocrc = (
        store.root["targets"]
        .create_group("clip_nocrc")
        .create_array(
            "features",
            shape=(plan.total_rows, 16, 16, 1280),
            dtype="float16",
            chunks=(1, 16, 16, 1280),
            shards=(SHARD_ROWS, 16, 16, 1280),
            compressors=compressors,
            fill_value=0,
        )
    )
    rng = np.random.default_rng(0)
    for start in range(0, rows, SHARD_ROWS):
        feats = rng.standard_normal((SHARD_ROWS, 16, 16, 1280), dtype=np.float32).astype(np.float16)
        summ = rng.standard_normal((SHARD_ROWS, 1280), dtype=np.float32).astype(np.float16)
        store.write_shard("clip", start, feats, summ)
        nocrc[start : start + SHARD_ROWS] = feats
        int8[start : start + SHARD_ROWS] = np.clip(np.rint(feats.astype(np.float32) * 32), -127, 127).astype(np.int8)
        if start < big_rows:
            big = rng.standard_normal((SHARD_ROWS, 64, 64, 1280), dtype=np.float32).astype(np.float16)
            store.write_shard("sam", start, big, None)
    return store


def files_of(store: FeatureStore, key: str, name: str) -> list[Path]:
    return sorted(p for p in (Path(store.path) / "targets" / key / name / "c").rglob("*") if p.is_file())


def raw_read(files: list[Path]) -> int:
    """The plain read: ``open().read()`` of each file (a fresh buffer each, as a reader's batch is)."""
    n = 0
    for p in files:
        with open(p, "rb") as f:
            n += len(f.read())
    return n


def raw_into(files: list[Path], buf: bytearray) -> int:
    """The memory-speed bound: each file read into one reused buffer (no page faults on fresh memory)."""
    n = 0
    view = memoryview(buf)
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            n += os.preadv(fd, [view[: os.fstat(fd).st_size]], 0)
        finally:
            os.close(fd)
    return n


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read goes to the disk."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def zarr_async_read(store: FeatureStore, key: str, rows: np.ndarray) -> None:
    """zarr's async API: every row of the batch as a concurrent ``getitem``, summary in one call."""
    import zarr.api.asynchronous as za

    async def go():
        feats = await za.open_array(store=str(Path(store.path) / "targets" / key / "features"), mode="r")
        summ = await za.open_array(store=str(Path(store.path) / "targets" / key / "summary"), mode="r")
        lo, hi = int(rows.min()), int(rows.max()) + 1
        await asyncio.gather(*(feats.getitem(int(r)) for r in rows), summ.getitem(slice(lo, hi)))

    asyncio.run(go())


def timed(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (first call warms caches and opens handles)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def alternating(fns: dict, repeat: int) -> dict[str, float]:
    """Best wall time of each of ``fns``, called in turn ``repeat`` times (after one warm-up call
    each), so that load from other processes falls on both sides of a ratio alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


MANIFEST_CHILD = r"""
import json, resource, sys, numpy as np
def rss_mb(field="RssAnon:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
from radio.store.manifest import Manifest  # the libraries a worker imports anyway
before, before_file = rss_mb(), rss_mb("RssFile:")
m = Manifest.load(sys.argv[1])
rows = np.random.default_rng(0).integers(0, len(m), 1024)
tars = m.tar_of(rows)
lookups = [(m.tar_paths[t], int(m.columns["offset"][r]), int(m.columns["size"][r]),
            int(m.columns["crop_x"][r]), int(m.columns["crop_y"][r]), int(m.columns["crop_w"][r]), int(m.columns["crop_h"][r])) for r, t in zip(rows, tars)]
print(json.dumps({"rows": len(m), "rss_mb": rss_mb() - before, "rss_file_mb": rss_mb("RssFile:") - before_file}))
"""


def s3_read(local: Path, rows: np.ndarray, batch: int, local_rows_per_s: float) -> dict:
    """Upload the store to a bucket on a local S3 server and read the 16x16 key in ``rows`` mode
    through the trainer's reader (tensorstore's s3 driver, concurrent ranged GETs): the cost of
    the network hop, as a ratio to the same reads from local disk."""
    import s3fs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' S3 server helper
    from s3local import local_s3_server

    with local_s3_server():
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        fs.put(str(local), "bench/store.zarr", recursive=True)
        reader = TargetReader("s3://bench/store.zarr", [("clip", True)])
        order = EpochOrder(rows, batch, 0, 0, "rows", SHARD_ROWS)
        batches = max(1, len(rows) // batch)
        got = reader.read(order.batch(0))  # also checks the bytes: the same as the local read
        want = TargetReader(local, [("clip", True)]).read(order.batch(0))
        assert all(np.array_equal(got["clip"][n], want["clip"][n]) for n in want["clip"])
        t = timed(lambda: [reader.read(order.batch(s)) for s in range(batches)], 1)
    rate = batches * batch / t
    return {"s3_rows_per_s": rate, "s3_ratio_to_local": rate / local_rows_per_s}


def manifest_rss(folder: Path, n: int) -> dict:
    """Save a synthetic ``n``-row manifest, then open it in a fresh process and look up a batch
    of 1024 random rows. The cost is the private resident memory that added (``RssAnon``, after
    the imports); mapped page-cache pages (``RssFile``, the kernel maps 64 KB around each touched
    page) are shared by every worker and reported apart."""
    tars = n // 10_000
    plan = Plan.build([(f"/shards/{i:08d}.tar", 0, 10_000, None) for i in range(tars)], SHARD_ROWS)
    rng = np.random.default_rng(0)
    cols = {
        "offset": np.arange(plan.total_rows, dtype=np.int64) * 40_000,
        "size": np.full(plan.total_rows, 40_000),
        "crop_x": rng.integers(0, 100, plan.total_rows),
        "crop_y": rng.integers(0, 100, plan.total_rows),
        "crop_w": np.full(plan.total_rows, 224),
        "crop_h": np.full(plan.total_rows, 224),
        "valid": np.ones(plan.total_rows, bool),
    }
    Manifest.from_arrays(plan, cols).save(folder)
    del cols
    out = subprocess.run(
        [sys.executable, "-c", MANIFEST_CHILD, str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512, help="rows of the 16x16x1280 key (multiple of 64)")
    ap.add_argument("--big-rows", type=int, default=64, help="rows of the 64x64x1280 key (multiple of 64)")
    ap.add_argument("--batch", type=int, default=64, help="rows per worker batch slice")
    ap.add_argument("--compressor", choices=["none", "zstd"], default="none")
    ap.add_argument("--manifest-rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--s3",
        action="store_true",
        help="also read the 16x16 key from a local S3 server (moto) and report it against local disk",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    r: dict = {}
    with tempfile.TemporaryDirectory(dir=".") as d:
        tmp = Path(d)
        store = build_store(tmp / "store.zarr", args.rows, args.big_rows, args.compressor)
        rows = np.arange(args.rows, dtype=np.int64)
        batches = max(1, args.rows // args.batch)
        n = batches * args.batch
        reader = TargetReader(store.path, [("clip", True)])
        orders = {m: EpochOrder(rows, args.batch, 0, 0, m, SHARD_ROWS) for m in ("rows", "blocks")}
        for mode, order in orders.items():
            t = timed(lambda: [reader.read(order.batch(s)) for s in range(batches)], args.repeat)
            r[f"{mode}_per_s"] = n / t
        # int8 compact features vs fp16 features of the same key (features only on both sides)
        fp16_only = TargetReader(store.path, [("clip", False)])
        int8_only = TargetReader(store.path, [("clip", False)], compact=frozenset({"clip"}))
        assert int8_only.read(rows[:1])["clip"]["features"].dtype == np.int8
        for name, rd in (("fp16_features", fp16_only), ("int8_features", int8_only)):
            t = timed(lambda: [rd.read(orders["rows"].batch(s)) for s in range(batches)], args.repeat)
            r[f"{name}_rows_per_s"] = n / t
        r["int8_speedup"] = r["int8_features_rows_per_s"] / r["fp16_features_rows_per_s"]
        # crc32c on every row (direct reader, hardware crc32c) against the layout without it, interleaved
        nocrc_only = TargetReader(store.path, [("clip_nocrc", False)])
        assert np.array_equal(
            nocrc_only.read(rows[:8])["clip_nocrc"]["features"], fp16_only.read(rows[:8])["clip"]["features"]
        )
        for mode, order in orders.items():
            pair = {"crc": fp16_only, "nocrc": nocrc_only}
            best = alternating(
                {k: (lambda rd=rd: [rd.read(order.batch(s)) for s in range(batches)]) for k, rd in pair.items()},
                args.repeat * 3,
            )
            for name, t in best.items():
                r[f"{name}_{mode}_rows_per_s"] = n / t
            r[f"crc_ratio_{mode}"] = r[f"crc_{mode}_rows_per_s"] / r[f"nocrc_{mode}_rows_per_s"]
        t = timed(lambda: [zarr_async_read(store, "clip", orders["rows"].batch(s)) for s in range(batches)], 1)
        r["zarr_async_rows_per_s"] = n / t
        clip_files = files_of(store, "clip", "features") + files_of(store, "clip", "summary")
        clip_bytes = sum(p.stat().st_size for p in clip_files)
        buf = bytearray(max(p.stat().st_size for p in clip_files))
        # the reader in rows mode against both plain reads, alternating: load falls on all alike
        best = alternating(
            {
                "rows": lambda: [reader.read(orders["rows"].batch(s)) for s in range(batches)],
                "raw": lambda: raw_read(clip_files),
                "raw_into": lambda: raw_into(clip_files, buf),
            },
            args.repeat * 2,
        )
        r["rows_per_s"] = max(r["rows_per_s"], n / best["rows"])
        r["raw_rows_per_s"] = args.rows / best["raw"]
        r["raw_gb_per_s"] = clip_bytes / best["raw"] / 1e9
        r["raw_into_rows_per_s"] = args.rows / best["raw_into"]
        r["raw_into_gb_per_s"] = clip_bytes / best["raw_into"] / 1e9
        # cold cache: the shard files evicted before each pass (one pass each: the next would be hot)
        for name, fn in (
            ("cold_rows", lambda: [reader.read(orders["rows"].batch(s)) for s in range(batches)]),
            ("cold_blocks", lambda: [reader.read(orders["blocks"].batch(s)) for s in range(batches)]),
            ("cold_raw", lambda: raw_read(clip_files)),
        ):
            evict(clip_files)
            t0 = time.perf_counter()
            fn()
            r[f"{name}_per_s"] = (args.rows if name == "cold_raw" else n) / (time.perf_counter() - t0)
        r["cold_raw_gb_per_s"] = r["cold_raw_per_s"] * clip_bytes / args.rows / 1e9
        r["cold_ratio_rows"] = r["cold_rows_per_s"] / r["cold_raw_per_s"]
        r["cold_ratio_blocks"] = r["cold_blocks_per_s"] / r["cold_raw_per_s"]
        # the SAM-H-sized key: fewer rows (10.5 MB each), batches of 8
        if args.big_rows:
            big = TargetReader(store.path, [("sam", False)])
            big_rows = np.arange(args.big_rows, dtype=np.int64)
            bb = max(1, args.big_rows // 8)
            for mode in ("rows", "blocks"):
                order = EpochOrder(big_rows, 8, 0, 0, mode, SHARD_ROWS)
                t = timed(lambda: [big.read(order.batch(s)) for s in range(bb)], args.repeat)
                r[f"big_{mode}_per_s"] = bb * 8 / t
            big_files = files_of(store, "sam", "features")
            t = timed(lambda: raw_read(big_files), args.repeat)
            r["big_raw_rows_per_s"] = args.big_rows / t
            r["big_ratio_rows"] = r["big_rows_per_s"] / r["big_raw_rows_per_s"]
            r["big_ratio_blocks"] = r["big_blocks_per_s"] / r["big_raw_rows_per_s"]
        if args.s3:
            r |= s3_read(tmp / "store.zarr", rows, args.batch, r["rows_per_s"])
        m = manifest_rss(tmp / "manifest", args.manifest_rows)
    r["ratio_rows"] = r["rows_per_s"] / r["raw_rows_per_s"]
    r["ratio_blocks"] = r["blocks_per_s"] / r["raw_rows_per_s"]
    r["ratio_rows_into"] = r["rows_per_s"] / r["raw_into_rows_per_s"]
    r["gb_per_s_rows"] = r["rows_per_s"] * clip_bytes / args.rows / 1e9
    r["manifest_rows"] = m["rows"]
    r["manifest_rss_mb"] = m["rss_mb"]
    r["manifest_rss_shared_file_mb"] = m["rss_file_mb"]

    print(f"16x16x1280 fp16 + summary ({args.rows} rows, batches of {args.batch}, compressor {args.compressor}):")
    print(f"  rows mode   {r['rows_per_s']:8.0f} rows/s  = {r['ratio_rows']:.2f} of raw")
    print(f"  blocks mode {r['blocks_per_s']:8.0f} rows/s  = {r['ratio_blocks']:.2f} of raw")
    print(f"  zarr async  {r['zarr_async_rows_per_s']:8.0f} rows/s  (rows mode, for comparison)")
    print(
        f"  raw read    {r['raw_rows_per_s']:8.0f} rows/s  ({r['raw_gb_per_s']:.2f} GB/s; page-cache-hot open().read())"
    )
    print(
        f"  raw into    {r['raw_into_rows_per_s']:8.0f} rows/s  ({r['raw_into_gb_per_s']:.2f} GB/s; into one reused "
        f"buffer: rows mode = {r['ratio_rows_into']:.2f} of it)"
    )
    print(
        f"  cold cache  rows {r['cold_rows_per_s']:.0f}, blocks {r['cold_blocks_per_s']:.0f}, raw read "
        f"{r['cold_raw_per_s']:.0f} rows/s ({r['cold_raw_gb_per_s']:.2f} GB/s): rows {r['cold_ratio_rows']:.2f}, "
        f"blocks {r['cold_ratio_blocks']:.2f} of raw (files evicted with POSIX_FADV_DONTNEED before each pass)"
    )
    print(
        f"  features only, rows mode: fp16 {r['fp16_features_rows_per_s']:.0f} rows/s, int8 compact "
        f"{r['int8_features_rows_per_s']:.0f} rows/s ({r['int8_speedup']:.2f}x for 0.5x the bytes)"
    )
    print(
        f"  crc32c on every row (features only): rows mode {r['crc_rows_rows_per_s']:.0f} vs "
        f"{r['nocrc_rows_rows_per_s']:.0f} rows/s without ({r['crc_ratio_rows']:.3f}), blocks mode "
        f"{r['crc_blocks_rows_per_s']:.0f} vs {r['nocrc_blocks_rows_per_s']:.0f} ({r['crc_ratio_blocks']:.3f})"
    )
    if args.s3:
        print(
            f"  from S3      {r['s3_rows_per_s']:8.0f} rows/s  = {r['s3_ratio_to_local']:.2f} of the same reads "
            "on local disk (moto on 127.0.0.1)"
        )
    if args.big_rows:
        print(
            f"64x64x1280 fp16 ({args.big_rows} rows, batches of 8): rows {r['big_rows_per_s']:.1f}/s "
            f"({r['big_ratio_rows']:.2f}), blocks {r['big_blocks_per_s']:.1f}/s ({r['big_ratio_blocks']:.2f}), "
            f"raw {r['big_raw_rows_per_s']:.1f}/s"
        )
    print(
        f"manifest: {r['manifest_rows']:,} rows opened in a fresh process: {r['manifest_rss_mb']:.1f} MB private "
        f"resident, {r['manifest_rss_shared_file_mb']:.1f} MB of shared page cache mapped"
    )
    keys = [
        "rows_per_s",
        "blocks_per_s",
        "raw_rows_per_s",
        "ratio_rows",
        "ratio_blocks",
        "ratio_rows_into",
        "cold_rows_per_s",
        "cold_raw_per_s",
        "cold_ratio_rows",
        "manifest_rows",
        "manifest_rss_mb",
    ]
    out = {k: r[k] for k in keys} | {k: v for k, v in r.items() if k not in keys}
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "loader.json").write_text(json.dumps(out, indent=2))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
