"""The store never destroys what it did not make, never mistakes "could not ask" for "absent",
and says what is wrong in one line (issue 21, slice A).

Real parts: folders on disk, the tiny store featurized once per session, a real S3 API (moto's
server on localhost). Faults (a 503 on one request, a read-only file system) are injected by
monkeypatching the one call that fails.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import s3fs
from typer.testing import CliRunner

import radio
from radio.cli.main import app
from radio.store import objects
from radio.store.layout import MANIFEST_SCHEMA, FeatureStore, Plan, StoreError
from radio.store.objects import Location

PLAN = Plan.build([("a.tar", 10, 3, None), ("b.tar", 10, 5, None)], shard_rows=4)
SERVICE_UNAVAILABLE = OSError(errno.EBUSY, "Service Unavailable")  # what s3fs makes of a 503


def _small_store(url: str) -> FeatureStore:
    """A two-tar store with one key, both tars complete with their manifests."""
    store = FeatureStore.create(url, PLAN, {"seed": 1})
    store.create_target("k", grid=(2, 2), feature_dim=3, summary_dim=None, provenance={"v": 1})
    for t in PLAN.tars:
        store.write_shard("k", t.row_start, np.ones((4, 2, 2, 3), np.float16), None)
        rows = [
            dict.fromkeys(MANIFEST_SCHEMA.names) | {"row": t.row_start + i, "tar_index": t.index, "valid": True}
            for i in range(t.samples)
        ]
        store.write_manifest(t.index, rows)
        store.mark_complete("k", t.index)
    return store


def _featurize_args(repo: Path, config, store: str) -> list[str]:
    return ["featurize", "--config", str(repo / "pipelines.yaml"), "--data", config.data.shards[0], "--store", store]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- 1. never delete a directory that is not a store -----------------------------------------


def test_featurize_into_a_folder_that_is_not_a_store_refuses_and_touches_nothing(tiny_store, repo, tmp_path):
    config, _ = tiny_store
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / "photos" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    shutil.copytree(Path(config.data.shards[0]).parent, home / "shards")  # swapped --data / --store
    before = _tree(home)
    result = CliRunner().invoke(app, _featurize_args(repo, config, str(home)))
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: {home}: exists and is not a radio store (no zarr.json; it holds notes.txt, "
        "photos, shards); nothing was touched: give a new or empty --store\n"
    )
    assert _tree(home) == before and sorted(p.name for p in home.iterdir()) == ["notes.txt", "photos", "shards"]


def test_create_refuses_a_file_and_a_full_folder_but_takes_an_empty_one(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError) as e:
        FeatureStore.create(tmp_path / "file", PLAN, {})
    assert str(e.value) == f"{tmp_path}/file: exists and is a file, not a radio store; give a new or empty --store"
    (tmp_path / "full" / "a" / "b").mkdir(parents=True)
    for name in "cdef":
        (tmp_path / "full" / name).write_text(name)
    with pytest.raises(StoreError) as e:
        FeatureStore.create(tmp_path / "full", PLAN, {})
    assert str(e.value) == (
        f"{tmp_path}/full: exists and is not a radio store (no zarr.json; it holds a, c, d, ... "
        "(5 entries)); nothing was touched: give a new or empty --store"
    )
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["a", "c", "d", "e", "f"]
    (tmp_path / "empty").mkdir()
    assert FeatureStore.create(tmp_path / "empty", PLAN, {}).plan == PLAN


def test_no_zarr_store_is_ever_opened_with_mode_w():
    """mode="w" deletes whatever is at the path before creating: the package must never use it."""
    root = Path(radio.__file__).parent
    files = [Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names if f.endswith(".py")]
    assert root / "store" / "layout.py" in files  # the walk follows radio/store -> ../store and the rest
    offenders = []
    for path in files:
        text = path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if re.search(r"""mode\s*=\s*["']w["']""", line) and "zarr" in text:
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert offenders == []


# -- 2. "could not ask" is not "absent" ------------------------------------------------------


def _fail_once(monkeypatch, method: str, suffix: str) -> list[str]:
    """Make s3fs's ``method`` raise a 503 once, for the first path ending in ``suffix``."""
    real = getattr(s3fs.S3FileSystem, method)
    failed: list[str] = []

    async def flaky(self, path, *args, **kwargs):
        if path.endswith(suffix) and not failed:
            failed.append(path)
            raise SERVICE_UNAVAILABLE
        return await real(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, method, flaky)
    _new_instances(monkeypatch)
    return failed


def _new_instances(monkeypatch) -> None:
    """fsspec caches filesystems, and an instance's sync methods wrap the async ones it was made
    with: new instances (and none left cached afterwards) see the patched method."""
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "_cache", {})


def _objects(url: str) -> list[str]:
    return sorted(s3fs.S3FileSystem(use_listings_cache=False).find(url))


def test_one_503_on_the_head_of_zarr_json_does_not_replan_the_store_over_its_data(s3_bucket, monkeypatch):
    url = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/store.zarr"  # the bucket is shared by the session
    _small_store(url)
    before = _objects(url)
    failed = _fail_once(monkeypatch, "_info", "store.zarr/zarr.json")
    store = FeatureStore.create(url, PLAN, {"seed": 1})  # featurize's resume
    assert failed, "the fault was not injected"
    assert _objects(url) == before and store.completed("k").tolist() == [True, True]


def test_a_store_that_cannot_be_asked_is_one_line_naming_the_url(s3_bucket, monkeypatch):
    url = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/store.zarr"  # the bucket is shared by the session
    _small_store(url)

    async def down(self, path, *args, **kwargs):
        raise SERVICE_UNAVAILABLE

    monkeypatch.setattr(objects, "RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.setattr(s3fs.S3FileSystem, "_info", down)
    _new_instances(monkeypatch)
    result = CliRunner().invoke(app, ["store", "info", url])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {url}/zarr.json: could not ask the object store "
        "(OSError: [Errno 16] Service Unavailable) after 3 tries\n"
    )


def test_one_503_on_a_manifest_is_retried_and_a_missing_one_is_an_error(s3_bucket, monkeypatch):
    from radio.store.manifest import Manifest

    url = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/store.zarr"  # the bucket is shared by the session
    store = _small_store(url)
    failed = _fail_once(monkeypatch, "_cat_file", "manifest/00000001.parquet")
    assert store.manifest().column("row").to_pylist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert failed
    assert Manifest.build(store).columns["valid"].sum() == 8
    s3fs.S3FileSystem().rm(f"{url}/manifest/00000001.parquet")
    message = (
        f"{url}/manifest/00000001.parquet: missing, but tar 1 (b.tar) is marked complete; run `radio store verify`"
    )
    for read in (store.manifest, lambda: Manifest.build(FeatureStore(url))):
        with pytest.raises(StoreError) as e:
            read()
        assert str(e.value) == message


def test_compact_refuses_a_complete_tar_without_its_manifest_instead_of_zeros(tiny_store, tmp_path):
    from radio.store import compact as c
    from radio.store.normalizers import fit_store

    _, path = tiny_store
    shutil.copytree(path, tmp_path / "s.zarr")
    store = FeatureStore(tmp_path / "s.zarr")
    fit_store(store, ["dinov2@112"])
    (tmp_path / "s.zarr" / store.manifest_name(1)).unlink()
    with pytest.raises(StoreError) as e:
        c.compact_store_key(store, "dinov2@112")
    tar = store.plan.tars[1].path
    assert str(e.value) == (
        f"{tmp_path}/s.zarr/manifest/00000001.parquet: missing, but tar 1 ({tar}) is marked "
        "complete; run `radio store verify`"
    )
    assert not c.compact_complete(store, "dinov2@112")[1]


def test_an_s3_endpoint_that_is_down_is_not_called_a_missing_store(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "radio.cli", "store", "info", "s3://bucket/store.zarr"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"error: s3://bucket/store.zarr/zarr.json: could not ask the object store "
        f"(EndpointConnectionError: Could not connect to the endpoint URL: "
        f'"http://127.0.0.1:{port}/bucket/store.zarr/zarr.json") after 1 try\n'
    )


def test_featurize_into_a_missing_bucket_is_one_line(tiny_store, repo, s3_server):
    config, _ = tiny_store
    result = CliRunner().invoke(app, _featurize_args(repo, config, "s3://radio-no-such-bucket/store.zarr"))
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: s3://radio-no-such-bucket/store.zarr: no such bucket 'radio-no-such-bucket'\n"


# -- 4. one-line errors ----------------------------------------------------------------------


def _edit_root(path: Path, **attrs) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"].update(attrs)
    (path / "zarr.json").write_text(json.dumps(meta))


def test_another_store_format_and_a_damaged_plan_are_named(tmp_path):
    path = tmp_path / "s.zarr"
    _small_store(str(path))
    runner = CliRunner()
    _edit_root(path, radio_store=2)
    result = runner.invoke(app, ["store", "info", str(path)])
    assert result.exit_code == 2 and result.stderr == f"error: {path}: store format 2; this radio reads format 1\n"
    _edit_root(path, radio_store=1, plan={"tars": []})
    result = runner.invoke(app, ["store", "verify", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: damaged root attribute plan (missing 'shard_rows')\n"
    _edit_root(path, plan={"shard_rows": 4, "tars": [{"index": 0}]})
    result = runner.invoke(app, ["store", "info", str(path)])
    assert result.exit_code == 2 and result.stderr.startswith(
        f"error: {path}: damaged root attribute plan (TypeError: "
    )


def _read_only(monkeypatch, root: Path) -> None:
    """The file system under ``root`` is mounted read-only (EROFS on every change; root too)."""
    real_access, real_unlink = os.access, os.unlink

    def access(path, mode, *args, **kwargs):
        if str(path).startswith(str(root)) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def unlink(path, *args, dir_fd=None, **kwargs):
        if dir_fd is not None or str(path).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "unlink", unlink)


def test_fit_phis_on_a_read_only_store_is_one_line(tiny_store, tmp_path, monkeypatch):
    _, path = tiny_store
    shutil.copytree(path, tmp_path / "s.zarr")
    _read_only(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, ["fit-phis", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2, result.output
    assert (
        result.stderr
        == f"error: {tmp_path}/s.zarr: the store is read-only (no write permission); fit-phis writes into it\n"
    )


def test_remove_prefix_that_cannot_remove_raises_instead_of_going_on(tmp_path, monkeypatch):
    (tmp_path / "s" / "targets" / "k").mkdir(parents=True)
    (tmp_path / "s" / "targets" / "k" / "zarr.json").write_text("{}")
    _read_only(monkeypatch, tmp_path)
    with pytest.raises(StoreError) as e:
        Location(tmp_path / "s").remove_prefix("targets/k")
    assert str(e.value) == f"{tmp_path}/s/targets/k: cannot remove (Read-only file system); is the store read-only?"
    assert (tmp_path / "s" / "targets" / "k" / "zarr.json").is_file()


def test_compact_overwrite_on_a_store_that_cannot_remove_is_one_line(tiny_store, tmp_path, monkeypatch):
    from radio.store import compact as c
    from radio.store.normalizers import fit_store

    _, path = tiny_store
    shutil.copytree(path, tmp_path / "s.zarr")
    store = FeatureStore(tmp_path / "s.zarr")
    fit_store(store, ["dinov2@112"])
    c.compact_store_key(store, "dinov2@112")
    monkeypatch.setattr(os, "unlink", _eros_unlink(os.unlink, tmp_path))
    result = CliRunner().invoke(
        app, ["store", "compact", str(tmp_path / "s.zarr"), "-k", "dinov2@112", "--rank", "8", "--overwrite"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: {tmp_path}/s.zarr/targets/dinov2@112/compact: cannot remove "
        "(Read-only file system); is the store read-only?\n"
    )
    assert c.compact_key(FeatureStore(tmp_path / "s.zarr"), "dinov2@112").features.rank is None  # the old one stays


def _eros_unlink(real, root: Path):
    def unlink(path, *args, dir_fd=None, **kwargs):
        if dir_fd is not None or str(path).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, dir_fd=dir_fd, **kwargs)

    return unlink


# -- 5. litter -------------------------------------------------------------------------------


def test_a_resumed_featurize_removes_only_the_temporary_files_of_killed_writers(tiny_store, repo, tmp_path):
    config, path = tiny_store
    store = tmp_path / "s.zarr"
    shutil.copytree(path, store, ignore=shutil.ignore_patterns("leases"))  # the copy is held by nobody
    chunk = store / "targets" / "clip@112" / "features" / "c"
    litter = [
        chunk / f"0.{'ab12' * 8}.partial",
        store / "manifest" / ".00000001.parquet.tmp4242",
        store / "zarr.0123456789abcdef0123456789abcdef.partial",
    ]
    kept = [
        store / "notes.partial",
        store / "manifest" / "x.tmp4242",
        store / "manifest" / ".hidden",
        tmp_path / ".outside.tmp99",
    ]
    for p in litter + kept:
        p.write_bytes(b"x")
    before = _tree(store)
    result = CliRunner().invoke(app, _featurize_args(repo, config, str(store)))
    assert result.exit_code == 0, result.output
    assert not [p for p in litter if p.exists()] and all(p.exists() for p in kept)
    after = _tree(store)
    assert {k: v for k, v in before.items() if k in after} == after  # nothing else changed or went
    assert sorted(before.keys() - after.keys()) == sorted(str(p.relative_to(store)) for p in litter)
