"""Training rows: deterministic batches from (seed, step), DDP slices, flips, held-out rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radio.distill.data import PartitionRows, StepBatches, global_batch, split_rows
from radio.distill.loss import KeyTarget
from radio.store.layout import FeatureStore


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
    ds = PartitionRows(str(path), 128, [KeyTarget("clip@112", "clip", (8, 8), False, True), KeyTarget("sam@128", "sam", (8, 8), True, False)])
    row = int(split.train[0])
    plain, flipped = ds[(row, False)], ds[(row, True)]
    assert torch.equal(flipped["image"], plain["image"].flip(2))
    for key in keys:
        assert torch.equal(flipped["targets"][key]["features"], plain["targets"][key]["features"].flip(1))
    assert torch.equal(flipped["targets"]["clip@112"]["summary"], plain["targets"]["clip@112"]["summary"])
    assert "summary" not in plain["targets"]["sam@128"]
