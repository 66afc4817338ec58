"""The direct target reader at memory speed (issue 27 part 3): every batch reads the same bytes as
zarr in the batch's own order, shard files stay open in a bounded per-process cache, a forked
child opens its own, and object stores still read through tensorstore."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from radio.store.layout import FeatureStore, Plan
from radio.store.shardread import ShardRuns
from radio.store.targets import TargetReader

SHARD = 8
ROWS = 6 * SHARD


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[FeatureStore, np.ndarray, np.ndarray]:
    """Six shards of 8 rows: 2x2x8 fp16 features and a 4-wide summary, random values."""
    plan = Plan.build([(f"/x/{i:08d}.tar", 0, SHARD, None) for i in range(ROWS // SHARD)], SHARD)
    s = FeatureStore.create(tmp_path_factory.mktemp("shardread") / "s.zarr", plan, {})
    s.create_target("k", grid=(2, 2), feature_dim=8, summary_dim=4, provenance={}, compressor="none")
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((ROWS, 2, 2, 8)).astype(np.float16)
    summ = rng.standard_normal((ROWS, 4)).astype(np.float16)
    for start in range(0, ROWS, SHARD):
        s.write_shard("k", start, feats[start : start + SHARD], summ[start : start + SHARD])
    return s, feats, summ


BATCHES = [
    np.array([5, 3, 4, 20, 0, 47, 6]),  # runs (3..6) and singles across shards, out of order
    np.arange(ROWS)[::-1].copy(),  # every row, reversed: whole shards as runs
    np.array([9, 9, 10, 9]),  # the same row twice in a batch (two crops of one image)
    np.array([13]),
]


@pytest.mark.parametrize("rows", BATCHES, ids=["mixed", "reversed", "repeats", "one"])
def test_each_batch_reads_zarrs_bytes_in_the_batchs_order(store, rows):
    s, feats, summ = store
    reader = TargetReader(s.path, [("k", True)])
    got = reader.read(rows)["k"]
    assert got["features"].dtype == np.float16 and got["features"].shape == (len(rows), 2, 2, 8)
    assert np.array_equal(got["features"], feats[rows]) and np.array_equal(got["summary"], summ[rows])
    assert np.array_equal(got["features"], s.array("k", "features")[rows])  # what zarr reads


def test_a_large_batch_split_over_threads_reads_the_same_bytes(store, monkeypatch):
    import radio.store.shardread as sr

    s, feats, _ = store
    monkeypatch.setattr(sr, "SPLIT_BYTES", 1)  # every batch of more than one run goes to the pool
    reader = TargetReader(s.path, [("k", False)])
    assert reader.threads > 1
    rows = np.random.default_rng(1).permutation(ROWS)[:30]
    assert np.array_equal(reader.read(rows)["k"]["features"], feats[rows])


def test_the_descriptor_cache_is_bounded_and_least_recently_used(store):
    s, feats, _ = store
    direct = ShardRuns.open(Path(s.path) / "targets" / "k" / "features")
    assert direct is not None and direct.crc
    direct.max_files = 2
    out = np.empty((ROWS, 2, 2, 8), np.float16)
    for shard in (0, 1, 2, 1, 3):
        rows = np.arange(shard * SHARD, shard * SHARD + 3)
        assert direct.read_rows(rows, out, np.arange(3)) == []
        assert np.array_equal(out[:3], feats[rows])
        assert direct.open_files() <= 2
    assert list(direct._files) == [1, 3]  # shard 2 was the least recently used when 3 came in
    # one batch over more shards than the cache holds: all stay open until it is read, then trimmed
    rows = np.arange(ROWS)
    assert direct.read_rows(rows, out, np.arange(ROWS)) == [] and np.array_equal(out, feats)
    assert direct.open_files() == 2
    fds = list(direct._files.values())
    direct.close()
    assert direct.open_files() == 0
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed, not leaked


def test_a_forked_child_opens_its_own_descriptors_and_the_parents_stay_open(store):
    s, feats, _ = store
    direct = ShardRuns.open(Path(s.path) / "targets" / "k" / "features")
    assert direct is not None
    out = np.empty((ROWS, 2, 2, 8), np.float16)
    direct.read_rows(np.arange(ROWS), out, np.arange(ROWS))
    parent = dict(direct._files)
    assert len(parent) == ROWS // SHARD
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the direct reader (no tensorstore, no Ray), then _exit
        try:
            before = direct.open_files()  # the parent's descriptors are not this process's cache
            mine = np.zeros_like(out)
            direct.read_rows(np.arange(ROWS), mine, np.arange(ROWS))
            ok = bool(np.array_equal(mine, feats))
            os.write(w, pickle.dumps((before, ok, direct._pid == os.getpid(), len(direct._files))))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        before, ok, pid_recorded, opened = pickle.loads(f.read())
    os.waitpid(pid, 0)
    assert (before, ok, pid_recorded, opened) == (0, True, True, ROWS // SHARD)
    assert dict(direct._files) == parent  # the child closed its copies only
    out[:] = 0
    direct.read_rows(np.arange(ROWS), out, np.arange(ROWS))
    assert np.array_equal(out, feats)
    # pickled (a spawned or forkserver worker): no descriptors travel
    assert pickle.loads(pickle.dumps(direct))._files == {}


def test_a_store_in_a_bucket_reads_the_same_bytes_through_tensorstore(store, s3_bucket):
    import s3fs

    s, feats, summ = store
    s3fs.S3FileSystem().put(str(s.path), f"{s3_bucket}/s.zarr", recursive=True)
    reader = TargetReader(f"{s3_bucket}/s.zarr", [("k", True)])
    rows = BATCHES[0]
    got = reader.read(rows)["k"]
    assert reader._direct["k"] is None  # URL stores never take the direct path
    assert np.array_equal(got["features"], feats[rows]) and np.array_equal(got["summary"], summ[rows])
