"""featurize.crops_per_image K: each epoch visits each image once, through one of its K rows
chosen as a pure function of (seed, epoch, image); the held-out split keeps an image's crops
together; a manifest written before crops were indexed still reads."""

from __future__ import annotations

import shutil

import numpy as np

from radio.distill.data import EpochOrder, StepBatches, crop_choice
from radio.store.layout import FeatureStore, Plan
from radio.store.manifest import Manifest
from radio.store.split import split_rows

K = 3
# Two tars, the first with a range padded past its 5 images (15 rows → 16), as Plan.build pads.
PLAN = Plan.build([("a.tar", 10, 5, None), ("b.tar", 10, 6, None)], shard_rows=8, crops_per_image=K)


def _rows() -> np.ndarray:
    return np.concatenate([np.arange(t.row_start, t.row_start + t.samples * K) for t in PLAN.tars])


def test_plan_gives_each_image_k_consecutive_rows():
    assert [(t.row_start, t.rows) for t in PLAN.tars] == [(0, 16), (16, 24)]
    assert PLAN.planned_rows(PLAN.tars[1]) == 18
    rows = _rows()
    images = PLAN.image_rows(rows)
    assert images.tolist()[:6] == [0, 0, 0, 3, 3, 3] and images.tolist()[15:18] == [16, 16, 16]
    assert Plan.from_json(PLAN.to_json()) == PLAN
    old = {k: v for k, v in PLAN.to_json().items() if k != "crops_per_image"}
    assert Plan.from_json(old).crops_per_image == 1  # a plan written before issue 23


def test_each_epoch_visits_each_image_once_through_one_crop():
    rows = _rows()
    order = EpochOrder(rows, 2, seed=5, partition=0, images=PLAN.image_rows(rows))
    assert order.images == 11 and order.per_epoch == 5
    seen = []
    for epoch in range(6):
        batch = np.concatenate([order.batch(epoch * order.per_epoch + i) for i in range(order.per_epoch)])
        images = PLAN.image_rows(batch)
        assert len(set(images.tolist())) == len(batch) == 10  # no image twice in an epoch (one dropped)
        seen.append(dict(zip(images.tolist(), batch.tolist())))
    # Across epochs an image is visited through different crops (K = 3, 6 epochs: not all the same).
    varied = sum(len({s[i] for s in seen if i in s}) > 1 for i in set(PLAN.image_rows(rows).tolist()))
    assert varied >= 8


def test_crop_choice_is_a_pure_function_and_resume_is_exact():
    rows = _rows()
    images = PLAN.image_rows(rows)
    # The same image's pick does not depend on which other images are in the run.
    ids = np.unique(images)
    full = crop_choice(9, 4, ids, np.full(len(ids), K))
    part = crop_choice(9, 4, ids[::2], np.full(len(ids[::2]), K))
    assert np.array_equal(full[::2], part)
    assert not np.array_equal(full, crop_choice(9, 5, ids, np.full(len(ids), K)))  # another epoch
    # A sampler started at step 7 (a resume) yields what the uninterrupted one did from step 7;
    # shuffled input rows give the same batches (the order is a function of the row set).
    one = list(StepBatches(rows, 2, 9, 0, 0, 12, images=images))
    shuffled = np.random.default_rng(0).permutation(len(rows))
    two = list(StepBatches(rows[shuffled], 2, 9, 0, 7, 12, images=images[shuffled]))
    assert one[7:] == two


def test_one_crop_per_image_keeps_todays_order():
    rows = np.arange(40)
    a = EpochOrder(rows, 8, 3, 0)
    b = EpochOrder(rows, 8, 3, 0, images=rows)
    assert all(np.array_equal(a.batch(s), b.batch(s)) for s in range(10))


def test_held_out_split_keeps_an_images_crops_together(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", PLAN, {})
    store.create_target("k", grid=(1, 1), feature_dim=2, summary_dim=None, provenance={})
    for t in PLAN.tars:
        n = t.samples * K
        rows = [
            {"row": t.row_start + i, "tar_index": t.index, "ordinal": i // K, "crop_index": i % K, "valid": i // K != 1}
            for i in range(n)
        ]
        store.write_manifest(t.index, rows)
        store.mark_complete("k", t.index)
    for held in (1, 2, 4):
        split = split_rows(store, ["k"], held)
        train, held_out = set(PLAN.image_rows(split.train).tolist()), set(PLAN.image_rows(split.held_out).tolist())
        assert len(held_out) == held and not train & held_out
        assert len(split.held_out) == held * K  # every crop of a held-out image
    assert split_rows(store, ["k"], 0).held_out.size == 0
    # invalid image 1 of each tar (rows 3..5, 19..21) is in neither
    assert not {3, 4, 5, 19, 20, 21} & set(split_rows(store, ["k"], 2).train.tolist())


def test_a_manifest_with_only_crop_size_reads_as_a_square_box(repo, tmp_path):
    path = tmp_path / "old.zarr"
    shutil.copytree(repo / "tests/golden/store_before_i22", path)
    store = FeatureStore(path)
    assert store.plan.crops_per_image == 1
    table = store.manifest()
    assert "crop_size" not in table.column_names
    valid = [r for r in table.to_pylist() if r["valid"]]
    assert valid and all(r["crop_w"] == r["crop_h"] > 0 and r["crop_index"] == 0 for r in valid)
    import pyarrow.parquet as pq

    old = pq.read_table(path / "manifest" / "00000000.parquet").to_pylist()
    first = next(r for r in old if r["valid"])
    assert (first["crop_x"], first["crop_y"], first["crop_size"]) == next(
        (r["crop_x"], r["crop_y"], r["crop_w"]) for r in valid if r["row"] == first["row"]
    )
    m = Manifest.build(store)
    assert int(m.columns["crop_w"][first["row"]]) == int(m.columns["crop_h"][first["row"]]) == first["crop_size"]


def test_k_crops_of_the_centre_square_are_refused_in_the_config():
    import pytest
    from pydantic import ValidationError

    from radio.config.schema import CropConfig, FeaturizeConfig

    assert FeaturizeConfig().crops_per_image == 1 and FeaturizeConfig().crop.kind == "random_resized"
    with pytest.raises(ValidationError, match=r"crops_per_image > 1 needs a random crop kind"):
        FeaturizeConfig(crops_per_image=2, crop=CropConfig(kind="center_square"))
    with pytest.raises(ValidationError, match=r"ratio \[2\.0, 1\.0\] must satisfy 0 < low <= high"):
        CropConfig(ratio=(2.0, 1.0))
