"""The featurize graph in-process: one decode per image for every teacher, one manifest write
per tar, per-teacher failure isolation, sample counts from img2dataset sidecars, and actor
memory from parameter counts."""

from __future__ import annotations

import json

import pytest

import radio.shards.tar as shards_module
from radio.config import load_pipeline
from radio.featurize.graph import (
    ClusterMemory,
    ClusterTooSmall,
    GiB,
    StageSpec,
    plan_passes,
    run_local,
    stage_specs,
    teacher_memory,
    teacher_size,
)
from radio.featurize.job import _settings, prepare, select
from radio.featurize.records import KeyJob
from radio.shards import counts
from radio.shards.sampledata import write_sample_data
from radio.store.inspect import verify_store
from radio.store.layout import FeatureStore


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    write_sample_data(root / "shards", images=10, shard_size=6, seed=2, corrupt=2, failed=0)
    return root


def _config(repo, root, name):
    return load_pipeline(
        repo / "pipelines.yaml", "tiny", data=str(root / "shards" / "*.tar"), store=str(root / f"{name}.zarr")
    )


@pytest.mark.slow
def test_four_teachers_decode_each_image_once_and_write_each_manifest_once(repo, small, monkeypatch):
    config = _config(repo, small, "once")
    store, items = prepare(config, select(config))
    assert len({it.teacher for it in items}) == 4
    decodes, manifests = [0], []
    decode = shards_module.decode_image
    write = FeatureStore.write_manifest

    def counted_decode(*a, **k):  # instruments: call the real functions, count the calls
        decodes[0] += 1
        return decode(*a, **k)

    def counted_write(self, tar, rows):
        manifests.append(tar)
        return write(self, tar, rows)

    monkeypatch.setattr(shards_module, "decode_image", counted_decode)
    monkeypatch.setattr(FeatureStore, "write_manifest", counted_write)
    results = list(run_local(store, items, _settings(config), config.featurize.batch_size))
    assert all(r.error is None for r in results) and len(results) == len(items)
    samples = sum(t.samples for t in store.plan.tars)
    with_image = sum(r["size"] is not None for r in store.manifest().to_pylist())
    assert decodes[0] == with_image and with_image >= samples - 2  # one decode per image, all teachers
    assert sorted(manifests) == [t.index for t in store.plan.tars]  # one manifest write per tar
    assert verify_store(store.path) == []


@pytest.mark.slow
def test_missing_weights_fail_only_their_teacher(repo, small, tmp_path):
    config = _config(repo, small, "isolated")
    teachers = dict(config.teachers)
    teachers["dinov2"] = teachers["dinov2"].model_copy(update={"weights": str(tmp_path / "missing.safetensors")})
    config = config.model_copy(update={"teachers": teachers})
    store, items = prepare(config, select(config))
    results = list(run_local(store, items, _settings(config), config.featurize.batch_size))
    failed = {r.teacher for r in results if r.error}
    assert failed == {"dinov2"}
    assert all("missing.safetensors" in r.error for r in results if r.error)
    for key in store.target_keys:
        done = store.completed(key)
        assert (not done.any()) if key.startswith("dinov2") else done.all(), key


def test_sample_counts_come_from_sidecars_when_consistent(small, monkeypatch):
    tar = str(sorted((small / "shards").glob("*.tar"))[0])
    size = (small / "shards" / tar).stat().st_size  # tar is absolute: the join keeps it
    n, _ = shards_module.count_samples(tar)

    def no_scan(path):
        raise AssertionError("the header scan ran")

    monkeypatch.setattr(counts, "count_samples", no_scan)
    assert counts.planned_samples(tar, size) == (n, None)
    stats = small / "shards" / tar.replace(".tar", "_stats.json")
    original = stats.read_text()
    try:  # a count that cannot fit in the tar: the header scan decides
        stats.write_text(json.dumps(json.loads(original) | {"successes": size}))
        with pytest.raises(AssertionError, match="the header scan ran"):
            counts.planned_samples(tar, size)
    finally:
        stats.write_text(original)


def test_actor_memory_comes_from_parameter_counts():
    params, width = teacher_size("dinov2_g_reg")
    assert 1.0e9 < params < 1.2e9 and width >= 1536  # ViT-g: 1.1 B parameters
    host, gpu = teacher_memory("dinov2_g_reg", (KeyJob("d", 224),), 256)
    small_host, small_gpu = teacher_memory("dinov2_tiny", (KeyJob("d", 224),), 256)
    assert host > 2 * params * 4 and gpu > params * 4
    assert small_host < host and small_gpu < gpu


def test_teachers_run_in_passes_when_their_actors_do_not_fit_together():
    specs = [StageSpec(f"t{i}", "m", None, (), ()) for i in range(4)]
    cluster = ClusterMemory(total=20 * GiB, largest=12 * GiB, gpus=1)

    def names(needs):
        return [[s.teacher for s in p] for p in plan_passes(specs[: len(needs)], needs, cluster)]

    assert names([(4 * GiB, 0.2)] * 4) == [["t0", "t1", "t2", "t3"]]  # all fit: one graph
    assert names([(8 * GiB, 0.1), (8 * GiB, 0.1), (9 * GiB, 0.1), (5 * GiB, 0.1)]) == [["t0", "t1"], ["t2", "t3"]]
    assert names([(GiB, 0.6)] * 3) == [["t0"], ["t1"], ["t2"]]  # GPU shares decide
    with pytest.raises(ClusterTooSmall) as e:
        names([(13 * GiB, 0.1)])
    assert str(e.value) == (
        "teacher t0 (m) needs 13.0 GiB of host memory per actor; the largest Ray node offers "
        "12.0 GiB: add a node with more memory"
    )


def test_pixel_columns_leave_after_their_last_teacher(repo, small):
    config = _config(repo, small, "specs")
    _, items = prepare(config, select(config))
    specs = stage_specs(items)
    dropped = [c for s in specs for c in s.drop]
    assert sorted(dropped) == sorted({f"px{k.resolution}" for it in items for k in it.keys})
    assert len(dropped) == len(set(dropped))
