"""`radio store compact` on the tiny store: codec in the store, resume, verify, drop-raw, errors,
and the trainer on a stage mixing raw and compact keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from radio.cli.main import app
from radio.store import compact as c
from radio.store.codec import decode
from radio.store.inspect import store_info, verify_store
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store, load_phis

pytestmark = pytest.mark.slow
KEY = "dinov2@112"


@pytest.fixture(scope="module")
def fitted(tiny_store, tmp_path_factory):
    """A private copy of the tiny store with PHI-S fitted (compaction writes into the store)."""
    config, path = tiny_store
    copy = tmp_path_factory.mktemp("compact") / "store.zarr"
    shutil.copytree(path, copy)
    fit_store(FeatureStore(copy))
    return config, copy


def _copy(path, tmp_path):
    shutil.copytree(path, tmp_path / "store.zarr")
    return FeatureStore(tmp_path / "store.zarr")


def test_compact_key_stores_phis_space_int8_that_decodes_to_the_normalized_targets(fitted, tmp_path):
    _, path = fitted
    store = _copy(path, tmp_path)
    assert c.compact_store_key(store, KEY, summary=True) == len(store.plan.tars)
    ck = c.compact_key(store, KEY)
    assert ck.features.name == "int8" and ck.summary is not None
    assert store.target(KEY).attrs["compact"] == {
        "codec": "int8",
        "rank": None,
        "clip": 4.0,
        "summary": True,
        "normalizer_tars": len(store.plan.tars),
    }
    rows = np.flatnonzero(np.abs(store.array(KEY, "features")[:]).reshape(store.plan.total_rows, -1).max(1) > 0)
    raw = store.array(KEY, "features")[rows].astype(np.float64)
    y = load_phis(store, KEY).normalize(raw)
    got = decode(ck.features, torch.from_numpy(store.root["targets"][KEY]["compact"]["features"][rows])).numpy()
    assert np.abs(got - y).max() <= 4.0 / 127 / 2 + 1e-5  # half a step: nothing beyond 4σ in this data
    kept = c.variance_retained(store, KEY)
    assert kept == pytest.approx(1 - ((got - y) ** 2).mean() / (y**2).mean(), rel=1e-6)
    assert kept >= 0.999
    assert verify_store(store.path) == []
    # Idempotent: the same request does nothing; another one needs --overwrite.
    assert c.compact_store_key(store, KEY, summary=True) == 0
    with pytest.raises(c.StoreError, match=r"^dinov2@112: compacted with other settings \(rank, summary, "):
        c.compact_store_key(store, KEY, rank=8)


def test_killed_compact_resumes_at_the_first_unfinished_tar_with_identical_arrays(fitted, tmp_path):
    _, path = fitted
    a, b = _copy(path, tmp_path / "a"), _copy(path, tmp_path / "b")
    c.compact_store_key(a, KEY, rank=16)

    class Killed(Exception):
        pass

    def die_after_first(t: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        c.compact_store_key(b, KEY, rank=16, on_tar=die_after_first)
    assert c.compact_complete(b, KEY).sum() == 1
    assert c.compact_store_key(b, KEY, rank=16) == len(b.plan.tars) - 1
    ga, gb = (s.root["targets"][KEY]["compact"] for s in (a, b))
    for name in ("features", "features_scale", "features_basis", "sse", "ssy", "complete"):
        assert np.array_equal(ga[name][...], gb[name][...]), name


def test_cli_compact_info_drop_raw_and_errors(fitted, tmp_path):
    config, path = fitted
    store = _copy(path, tmp_path)
    runner = CliRunner()
    shutil.rmtree(Path(store.path) / "normalizers" / "clip")  # the teacher of clip@112 has no normalizer
    r = runner.invoke(app, ["store", "compact", str(store.path), "-k", "clip@112"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: clip@112: no PHI-S normalizer for features; run `radio fit-phis` before compacting"
    ]
    r = runner.invoke(app, ["store", "compact", str(store.path), "-k", KEY, "--rank", "9999"])
    assert r.exit_code == 2 and "error: dinov2@112: --rank 9999: must be in 1..48" in r.output
    r = runner.invoke(app, ["store", "compact", str(store.path), "-k", KEY, "--summary", "--drop-raw"])
    assert r.exit_code == 0, r.output
    assert f"{KEY}: raw targets dropped" in r.output
    assert not (Path(store.path) / "targets" / KEY / "features" / "c").exists()
    info = {k.key: k for k in store_info(store.path)["keys"]}[KEY]
    assert info.codec == "int8" and info.raw_dropped and info.variance_retained >= 0.999
    assert info.compact_bytes_per_sample / info.raw_bytes_per_sample == pytest.approx(0.5)
    assert runner.invoke(app, ["store", "verify", str(store.path)]).exit_code == 0
    # A corrupted codec parameter is found.
    g = FeatureStore(store.path).root["targets"][KEY]["compact"]
    g["features_scale"][0] = np.nan
    problems = verify_store(store.path)
    assert problems[0] == f"{KEY} compact: features scale has non-finite or non-positive values"


def test_trainer_on_a_mixed_raw_and_compact_stage_matches_raw_training(fitted, tmp_path):
    from radio.distill.trainer import train_stage

    config, path = fitted
    store = _copy(path, tmp_path)
    for key in ("dinov2@112", "sam@128"):
        c.compact_store_key(store, key, summary=key.startswith("dinov2"))
    raw_cfg = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(path)}), "out": str(tmp_path / "raw")}
    )
    mixed_cfg = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(store.path)}), "out": str(tmp_path / "mixed")}
    )
    seen = []
    raw = train_stage(raw_cfg, 1, steps=3)
    mixed = train_stage(mixed_cfg, 1, steps=3, on_step=seen.append)
    # Same student, rows and crops: the losses differ only by the int8 quantization error.
    assert np.allclose(mixed.losses, raw.losses, rtol=2e-3), (raw.losses, mixed.losses)
    assert "128:dinov2@112/features" in seen[0] and "128:clip@112/features" in seen[0]


def test_featurize_writes_compact_directly_after_fit_phis_max_tars(tiny_store, repo, tmp_path):
    from radio.config import load_pipeline
    from radio.featurize.graph import run_local
    from radio.featurize.job import _settings, prepare, select
    from radio.shards.sampledata import write_sample_data
    from radio.store.compact_decode import compact_keys

    _, ref_path = tiny_store
    write_sample_data(tmp_path / "shards", images=40, shard_size=16, seed=11, corrupt=2)  # the tiny store's shards
    config = load_pipeline(
        repo / "pipelines.yaml",
        "tiny",
        data=str(tmp_path / "shards" / "*.tar"),
        store=str(tmp_path / "store.zarr"),
        out=str(tmp_path / "run"),
    )
    selection = select(config, ["dinov2"])
    store, items = prepare(config, selection)
    settings, batch = _settings(config), config.featurize.batch_size
    first, rest = items[:2], items[2:]
    assert rest
    assert all(r.error is None for r in run_local(store, first, settings, batch))
    fit_store(store, [KEY], allow_partial=True, max_tars=2)
    store, items = prepare(config, selection)  # the driver sees the normalizer: the rest is written compact
    assert [i.tar_index for i in items] == [i.tar_index for i in rest]
    ck = c.compact_key(store, KEY)
    assert ck.features.name == "int8" and ck.attrs["normalizer"]["tar_indices"] == [0, 1]
    assert all(r.error is None for r in run_local(store, items, settings, batch))
    t = store.plan.tars[rest[0].tar_index]
    assert not (
        Path(store.path) / "targets" / KEY / "features" / "c" / str(t.row_start // store.plan.shard_rows)
    ).exists()
    assert c.raw_missing(store, KEY).tolist() == [False, False, True]
    assert verify_store(store.path) == []
    with pytest.raises(c.StoreError, match=r"^dinov2@112: some tars are stored only compact and 2 only raw; run"):
        compact_keys(store, [KEY])
    assert c.compact_store_key(store, KEY) == 2
    assert list(compact_keys(store, [KEY])) == [KEY]
    # The direct-written tar decodes to the normalized features an all-raw featurize stores.
    rows = slice(t.row_start, t.row_start + t.rows)
    raw = FeatureStore(ref_path).array(KEY, "features")[rows].astype(np.float64)
    valid = np.abs(raw).reshape(len(raw), -1).max(1) > 0
    y = load_phis(store, KEY).normalize(raw[valid])
    got = decode(ck.features, torch.from_numpy(store.root["targets"][KEY]["compact"]["features"][rows][valid])).numpy()
    assert np.abs(got - y).max() <= 4.0 / 127 / 2 + 1e-4
