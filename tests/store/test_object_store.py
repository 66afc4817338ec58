"""The store on object storage: a real S3 API (moto's server on localhost) and file:// URLs.

Over S3: sample tars are uploaded, featurize reads them and writes the store into the bucket,
is killed with SIGKILL and resumed, and must equal an uninterrupted run on local disk bit for
bit; `store verify`, fit-phis and a few distill steps then run against the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import load_pipeline
from radio.shards.sampledata import CORRUPT_KINDS, write_sample_data
from radio.shards.tar import ShardReader, TarFiles
from radio.store.inspect import store_info, verify_store
from radio.store.layout import MANIFEST_SCHEMA, FeatureStore, Plan, StoreError

# -- file:// URLs: the local case through the same code ----------------------------------------


def test_store_at_a_file_url_writes_objects_and_reopens_as_a_path(tmp_path):
    url = f"file://{tmp_path}/s.zarr"
    plan = Plan.build([("a.tar", 10, 3, None), ("b.tar", 10, 5, None)], shard_rows=4)
    store = FeatureStore.create(url, plan, {"seed": 1})
    store.create_target("k", grid=(2, 2), feature_dim=3, summary_dim=None, provenance={"v": 1})
    feats = np.arange(4 * 2 * 2 * 3, dtype=np.float16).reshape(4, 2, 2, 3)
    store.write_shard("k", 4, feats, None)
    row = dict.fromkeys(MANIFEST_SCHEMA.names) | {"row": 4, "tar_index": 1, "valid": True}
    store.write_manifest(1, [row])
    store.mark_complete("k", 1)
    again = FeatureStore(tmp_path / "s.zarr")  # the same store as a plain path
    assert again.plan == plan and np.array_equal(again.array("k", "features")[4:8], feats)
    assert again.completed("k").tolist() == [False, True]
    assert again.manifest().column("row").to_pylist() == [4]
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "manifest").iterdir()) == ["00000001.parquet"]
    # --overwrite removes the key's objects and pre-allocates it again.
    store.create_target("k", grid=(2, 2), feature_dim=3, summary_dim=None, provenance={"v": 2}, overwrite=True)
    assert not FeatureStore(url).completed("k").any()
    with pytest.raises(StoreError, match="not a radio store"):
        FeatureStore(f"file://{tmp_path}/none")


# -- S3 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, repo, featurize_here):
    """Sample tars and an uninterrupted featurize of them on local disk."""
    root = tmp_path_factory.mktemp("local")
    write_sample_data(root / "shards", images=20, shard_size=6, seed=5, corrupt=len(CORRUPT_KINDS))
    config = load_pipeline(
        repo / "pipelines.yaml",
        "tiny",
        data=str(root / "shards" / "*.tar"),
        store=str(root / "store.zarr"),
        out=str(root / "run"),
    )
    featurize_here(config)
    return root


@pytest.fixture(scope="module")
def s3_data(s3_bucket, local_run):
    """The same tars uploaded to the bucket: ``s3://BUCKET/shards/*.tar``."""
    import s3fs

    fs = s3fs.S3FileSystem()
    for tar in sorted((local_run / "shards").glob("*.tar")):
        fs.put_file(str(tar), f"{s3_bucket}/shards/{tar.name}")
    return f"{s3_bucket}/shards"


def _featurize(repo, data: str, store: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "radio.cli",
        "featurize",
        "--config",
        str(repo / "pipelines.yaml"),
        "--data",
        f"{data}/*.tar",
        "--store",
        store,
    ]


def _arrays(store: FeatureStore) -> dict[str, np.ndarray]:
    out = {}
    for key in store.target_keys:
        g = store.root["targets"][key]
        for name, arr in g.arrays():
            out[f"{key}/{name}"] = arr[:]
        for name, arr in g["moments"].arrays():
            out[f"{key}/moments/{name}"] = arr[:]
    return out


@pytest.mark.slow
def test_featurize_on_s3_killed_and_resumed_equals_local_then_trains(s3_data, s3_bucket, local_run, repo, tmp_path):
    import s3fs

    url = f"{s3_bucket}/resume/store.zarr"  # the bucket is shared by the session
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    env = os.environ | {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    # Own session: SIGKILL reaches the driver and the Ray processes it started.
    proc = subprocess.Popen(
        _featurize(repo, s3_data, url),
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(fs.glob(f"{url}/targets/*/complete/c/*")) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "featurize finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    partial = FeatureStore(url)
    total = len(partial.plan.tars) * len(partial.target_keys)
    assert 0 < sum(int(partial.completed(k).sum()) for k in partial.target_keys) < total
    resumed = subprocess.run(_featurize(repo, s3_data, url), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # Bit-identical to the uninterrupted local run; the manifests differ only in the tar paths.
    local, remote = FeatureStore(local_run / "store.zarr"), FeatureStore(url)
    a, b = _arrays(local), _arrays(remote)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    ma, mb = local.manifest().to_pydict(), remote.manifest().to_pydict()
    assert [p.rsplit("/", 1)[1] for p in ma.pop("tar")] == [p.rsplit("/", 1)[1] for p in mb.pop("tar")]
    assert ma == mb
    assert all(p.startswith(s3_data) for p in remote.manifest().column("tar").to_pylist())
    # Nothing was left beside the objects the store is made of (no temporary names).
    assert not [p for p in fs.find(url) if "/." in p or ".tmp" in p]

    assert verify_store(url) == []
    runner = CliRunner()
    result = runner.invoke(app, ["store", "verify", url])
    assert result.exit_code == 0 and result.stdout.strip() == f"{url}: ok", result.output
    assert store_info(url)["valid"] == store_info(local_run / "store.zarr")["valid"]

    # fit-phis writes its normalizers and plot into the bucket; distill trains from it.
    cfg = ["--config", str(repo / "pipelines.yaml"), "--store", url]
    result = runner.invoke(app, ["fit-phis", *cfg])
    assert result.exit_code == 0, result.output
    assert fs.isfile(f"{url}/phis_spectra.png")
    from radio.distill.run import read_metrics
    from radio.distill.trainer import train_stage

    config = load_pipeline(
        repo / "pipelines.yaml", "tiny", data=f"{s3_data}/*.tar", store=url, out=str(tmp_path / "run")
    )
    train_stage(config, 1, steps=3, workers=1)  # a forked DataLoader worker reads images by range
    records = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["total"]) for r in records)


def test_range_reader_reads_members_of_s3_tars_by_offset(s3_data, local_run):
    reader = TarFiles(max_open=2)
    tars = sorted((local_run / "shards").glob("*.tar"))
    for tar in tars[:3]:
        for s in ShardReader(str(tar)).raw_samples():
            if s.image_suffix in s.members:
                ref = s.refs[s.image_suffix]
                got = reader.read(f"{s3_data}/{tar.name}", ref.offset, ref.size)
                assert got == s.members[s.image_suffix]
    assert len(reader._handles) == 2  # least recently used handles are closed
    reader.close()
