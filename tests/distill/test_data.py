"""Training rows: deterministic batches from (seed, step), DDP slices, flips, held-out rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from radio.distill.data import EpochOrder, PartitionRows, StepBatches, global_batch, on_device
from radio.distill.loss import KeyTarget
from radio.store.layout import FeatureStore
from radio.store.split import split_rows


def test_batches_depend_only_on_seed_and_step():
    rows = np.arange(100, 150)
    a = [global_batch(rows, 8, 3, 0, s) for s in range(12)]
    b = [global_batch(rows, 8, 3, 0, s) for s in range(5, 12)]
    assert all(np.array_equal(x, y) for x, y in zip(a[5:], b))  # a resume at step 5 sees the same batches
    epoch = np.concatenate(a[:6])  # 50 rows // 8 = 6 batches per epoch, each row at most once
    assert len(set(epoch.tolist())) == 48
    assert not np.array_equal(a[0], global_batch(rows, 8, 4, 0, 0))  # another seed, another order
    with pytest.raises(ValueError, match="batch size 64 exceeds the 50 training rows"):
        global_batch(rows, 64, 0, 0, 0)


def test_ranks_take_disjoint_slices_of_the_global_batch():
    rows = np.arange(40)
    one = list(StepBatches(rows, 8, 0, 0, 2, 5))
    two = [list(StepBatches(rows, 8, 0, 0, 2, 5, rank=r, world=2)) for r in range(2)]
    for step in range(3):
        assert two[0][step] + two[1][step] == one[step]
    with pytest.raises(ValueError, match="global batch size 8 is not divisible by 3 ranks"):
        StepBatches(rows, 8, 0, 0, 0, 1, world=3)


def test_flip_mirrors_image_and_target_grids_together(tiny_store):
    config, path = tiny_store
    store = FeatureStore(path)
    keys = ["clip@112", "sam@128"]
    split = split_rows(store, keys, config.eval.held_out)
    assert len(split.held_out) == config.eval.held_out
    assert not set(split.train) & set(split.held_out)
    ds = PartitionRows(
        str(path),
        128,
        [KeyTarget("clip@112", "clip", (8, 8), False, True), KeyTarget("sam@128", "sam", (8, 8), True, False)],
    )
    row = int(split.train[0])
    plain, flipped = ds[(row, False)], ds[(row, True)]
    assert torch.equal(flipped["image"], plain["image"].flip(2))
    for key in keys:
        assert torch.equal(flipped["targets"][key]["features"], plain["targets"][key]["features"].flip(1))
    assert torch.equal(flipped["targets"]["clip@112"]["summary"], plain["targets"]["clip@112"]["summary"])
    assert "summary" not in plain["targets"]["sam@128"]


def test_blocks_sampling_takes_whole_shards_and_visits_every_row_once_per_epoch():
    rows = np.concatenate(
        [np.arange(0, 6), np.arange(8, 16), np.arange(16, 21), np.arange(40, 48)]
    )  # gaps: invalid rows
    order = EpochOrder(rows, 9, 5, 0, "blocks", shard_rows=8)
    epoch = np.concatenate([order.batch(s) for s in range(order.per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch) == 27 and set(epoch.tolist()) <= set(rows.tolist())
    full = np.concatenate(
        [order.batch(order.per_epoch * 7), order.batch(order.per_epoch * 7 + 1), order.batch(order.per_epoch * 7 + 2)]
    )
    shards = full // 8
    assert (np.diff(np.flatnonzero(np.diff(shards) != 0)) > 1).all() or len(
        set(shards.tolist())
    ) <= 4  # shards stay whole
    assert all((np.diff(full[shards == s]) == 1).all() for s in set(shards.tolist()))  # contiguous inside a shard
    # a pure function of (seed, partition, step): a fresh order resumed at step 5 agrees
    assert np.array_equal(EpochOrder(rows, 9, 5, 0, "blocks", 8).batch(5), order.batch(5))
    assert not np.array_equal(EpochOrder(rows, 9, 5, 0, "rows", 8).batch(0), order.batch(0))


def test_batched_reads_equal_zarr_reads_in_store_dtype(tiny_store):
    config, path = tiny_store
    store = FeatureStore(path)
    keys = [KeyTarget("clip@112", "clip", (8, 8), False, True), KeyTarget("sam@128", "sam", (8, 8), True, False)]
    rows = split_rows(store, [t.key for t in keys], 0).train
    pick = np.concatenate([rows[5:1:-1], rows[-3:]])  # a reversed run, a run at the end
    flips = [False, True, False, False, True, True, False]
    ds = PartitionRows(str(path), 128, keys)
    batch = ds.__getitems__(list(zip(pick.tolist(), flips)))
    assert batch["row"].tolist() == pick.tolist()
    for t in keys:
        want = store.array(t.key, "features")[:][pick]
        got = batch["targets"][t.key]["features"]
        assert got.dtype == torch.float16  # converted only on the device (on_device)
        for i, f in enumerate(flips):
            assert np.array_equal(got[i].numpy(), want[i][:, ::-1] if f else want[i])
        if t.summary:
            assert np.array_equal(batch["targets"][t.key]["summary"].numpy(), store.array(t.key, "summary")[:][pick])
    single = ds[(int(pick[1]), True)]
    assert torch.equal(single["image"], batch["image"][1])
    assert single["targets"]["clip@112"]["features"].dtype == torch.float32
    moved = on_device(batch, "cpu")
    assert moved["targets"]["sam@128"]["features"].dtype == torch.float32


def test_a_store_planned_for_a_million_rows_opens_splits_and_serves_a_batch(tmp_path):
    """Sparse arrays (the fill value writes no bytes): the columnar manifest, the split and a
    batch at 1M+ rows, without a Python object per row."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from radio.store.layout import MANIFEST_SCHEMA, Plan
    from radio.store.manifest import Manifest

    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg, "JPEG")
    tar_path = tmp_path / "00000000.tar"
    with tarfile.open(tar_path, "w") as tf:
        info = tarfile.TarInfo("000000000.jpg")
        info.size = len(jpg.getvalue())
        tf.addfile(info, io.BytesIO(jpg.getvalue()))
    with tarfile.open(tar_path) as tf:
        member = tf.getmember("000000000.jpg")
        offset, size = member.offset_data, member.size
    tars, per_tar, shard_rows = 4, 262_144, 1024
    plan = Plan.build([(str(tar_path), 0, per_tar, None)] * tars, shard_rows)
    store = FeatureStore.create(tmp_path / "store.zarr", plan, {})
    store.create_target(
        "k", grid=(2, 2), feature_dim=8, summary_dim=4, provenance={}, compressor="zstd"
    )  # zstd: the tensorstore path
    n = plan.total_rows
    assert n >= 1_000_000
    rng = np.random.default_rng(1)
    written = {}
    for shard_start in (0, n - shard_rows):  # two real shards, the rest is fill value
        feats = rng.standard_normal((shard_rows, 2, 2, 8)).astype(np.float16)
        summ = rng.standard_normal((shard_rows, 4)).astype(np.float16)
        store.write_shard("k", shard_start, feats, summ)
        written[shard_start] = (feats, summ)
    for t in plan.tars:  # manifests written column-wise: a million dicts would be the old cost
        rows = np.arange(t.row_start, t.row_start + per_tar)
        cols = {
            "row": rows,
            "key": pa.nulls(per_tar, pa.string()),
            "uid": pa.nulls(per_tar, pa.string()),
            "tar": np.full(per_tar, str(tar_path)),
            "tar_index": np.full(per_tar, t.index, np.int32),
            "ordinal": np.zeros(per_tar, np.int32),
            "offset": np.full(per_tar, offset),
            "size": np.full(per_tar, size),
            "valid": rows % 7 != 3,
            "reason": pa.nulls(per_tar, pa.string()),
            "width": np.full(per_tar, 64, np.int32),
            "height": np.full(per_tar, 64, np.int32),
            "crop_x": np.zeros(per_tar, np.int32),
            "crop_y": np.zeros(per_tar, np.int32),
            "crop_w": np.full(per_tar, 64, np.int32),
            "crop_h": np.full(per_tar, 64, np.int32),
            "crop_index": np.zeros(per_tar, np.int32),
        }
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(cols, schema=MANIFEST_SCHEMA), sink)
        store.location.write_bytes(store.manifest_name(t.index), sink.getvalue().to_pybytes())
        store.mark_complete("k", t.index)

    manifest = Manifest.build(store)
    assert sum(a.nbytes for a in manifest.columns.values()) <= 30 * n  # columnar: bytes, not objects
    split = split_rows(store, ["k"], 1000, manifest)
    valid = np.flatnonzero(np.arange(n) % 7 != 3)
    assert np.array_equal(np.concatenate([split.train, split.held_out]), valid) and len(split.held_out) == 1000
    assert np.array_equal(split_rows(store, ["k"], 1000).train, split.train)  # the parquet path agrees
    folder = manifest.save(tmp_path / "run" / "manifest")
    ds = PartitionRows(str(store.path), 32, [KeyTarget("k", "t", (2, 2), False, True)], manifest=folder)
    for sampling in ("rows", "blocks"):
        (items,) = list(StepBatches(split.train, 64, 0, 0, 3, 4, sampling=sampling, shard_rows=shard_rows))
        rows = np.array([r for r, _ in items])
        assert set(rows.tolist()) <= set(split.train.tolist()) and len(set(rows.tolist())) == 64
    pick = [0, 1, 2, 1000, n - shard_rows + 5, n - 1]
    batch = ds.__getitems__([(r, False) for r in pick])
    assert batch["image"].shape == (6, 3, 32, 32)
    f, s = batch["targets"]["k"]["features"].numpy(), batch["targets"]["k"]["summary"].numpy()
    for i, r in enumerate(pick):
        start = r - r % shard_rows
        want_f, want_s = (written[start][0][r - start], written[start][1][r - start]) if start in written else (0, 0)
        assert np.array_equal(f[i], np.broadcast_to(want_f, f[i].shape)) and np.array_equal(
            s[i], np.broadcast_to(want_s, s[i].shape)
        )
    # A row of a complete tar whose shard is absent is an error, never the fill value (issue 21).
    from radio.store.checksums import MissingDataError

    with pytest.raises(
        MissingDataError, match=r"^k: features of tar 1 \(00000000.tar\), row 500000, shard .*c/488/0/0/0 is missing"
    ):
        ds.__getitems__([(500_000, False)])


class _EnvProbe(torch.utils.data.Dataset):
    """Each item is the worker's value of one environment variable."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> str:
        return os.environ.get("RADIO_TEST_LATE_VARIABLE", "missing")


def _first(batch: list[str]) -> str:
    return batch[0]


def test_forkserver_workers_see_variables_set_after_the_forkserver_started(monkeypatch):
    from torch.utils.data import DataLoader

    from radio.distill.data import WorkerEnvironment

    monkeypatch.delenv("RADIO_TEST_LATE_VARIABLE", raising=False)
    first = DataLoader(_EnvProbe(), num_workers=1, multiprocessing_context="forkserver", collate_fn=_first)
    assert list(first) == ["missing"]  # the forkserver now runs, with this environment
    monkeypatch.setenv("RADIO_TEST_LATE_VARIABLE", "set later")  # e.g. AWS_* credentials for an S3 store
    plain = DataLoader(_EnvProbe(), num_workers=1, multiprocessing_context="forkserver", collate_fn=_first)
    assert list(plain) == ["missing"]  # what the trainer's workers saw: S3 reads failed with NoCredentialsError
    fixed = DataLoader(
        _EnvProbe(),
        num_workers=1,
        multiprocessing_context="forkserver",
        collate_fn=_first,
        worker_init_fn=WorkerEnvironment(),
    )
    assert list(fixed) == ["set later"]
