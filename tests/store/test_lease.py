"""Leases (radio.store.lease): one writer at a time, and no delete or rewrite under a training run.

Real stores on disk (a copy of the tiny store) and on a real S3 API; the other holder is a real
lease object, written by a Lease in this process or by hand for holders on other hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radio.cli.main import app
from radio.store import lease
from radio.store.lease import Lease, LeaseHeld, LeaseInfo, leases
from radio.store.objects import Location


@pytest.fixture()
def copy(tiny_store, tmp_path) -> Path:
    _, path = tiny_store
    shutil.copytree(path, tmp_path / "s.zarr", ignore=shutil.ignore_patterns("leases"))
    return tmp_path / "s.zarr"


def _featurize(repo: Path, config, store: Path, *args: str):
    return CliRunner().invoke(
        app,
        [
            "featurize",
            "--config",
            str(repo / "pipelines.yaml"),
            "--data",
            config.data.shards[0],
            "--store",
            str(store),
            *args,
        ],
    )


def _write_lease(store: Path, **fields) -> LeaseInfo:
    now = time.time()
    info = LeaseInfo(
        **(
            {
                "kind": "writer",
                "holder": "featurize",
                "host": "other-host",
                "pid": 4242,
                "since": now - 60,
                "expires": now + 60,
                "token": "abc123abc123",
            }
            | fields
        )
    )
    Location(store).write_bytes(info.name, json.dumps(info.__dict__).encode())
    return info


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_featurize_says_who_holds_the_store_and_exits(tiny_store, repo, copy):
    config, _ = tiny_store
    with Lease(copy, "writer", "featurize") as held:
        result = _featurize(repo, config, copy)
        info = held.info
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: {copy}: held by featurize (writer) on host {socket.gethostname()}, "
        f"pid {os.getpid()}, since {lease._utc(info.since)}, lease expires "
        f"{lease._utc(info.expires)}; pass --wait to wait for it\n"
    )
    assert leases(Location(copy)) == []  # released; the refused run left none
    assert _featurize(repo, config, copy).exit_code == 0


def test_featurize_wait_waits_until_the_other_writers_lease_expires(tiny_store, repo, copy):
    config, _ = tiny_store
    other = _write_lease(copy, expires=time.time() + 1.5)
    start = time.time()
    result = _featurize(repo, config, copy, "--wait")
    assert result.exit_code == 0, result.output
    assert time.time() - start >= 1.0 and time.time() >= other.expires
    assert leases(Location(copy)) == []  # the expired one was tidied, ours released


def test_stale_leases_hold_nothing_and_are_tidied(tiny_store, repo, copy):
    config, _ = tiny_store
    _write_lease(copy, host=socket.gethostname(), pid=_dead_pid(), token="deadpid00000")  # killed on this host
    _write_lease(copy, expires=time.time() - 1, token="expired00000")  # killed elsewhere, expired
    assert len(leases(Location(copy))) == 2
    result = _featurize(repo, config, copy)
    assert result.exit_code == 0, result.output
    assert leases(Location(copy)) == []


def test_destructive_writers_refuse_while_a_training_run_reads(tiny_store, repo, copy):
    config, _ = tiny_store
    reader = _write_lease(copy, kind="reader", holder="distill", token="reader000000")
    who = (
        f"distill (reader) on host other-host, pid 4242, since {lease._utc(reader.since)}, "
        f"lease expires {lease._utc(reader.expires)}"
    )
    runner = CliRunner()
    for args, holder in (
        (["store", "compact", str(copy), "--drop-raw"], "store compact"),
        (["fit-phis", "--store", str(copy)], "fit-phis"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stderr == (
            f"error: {copy}: in use by {who}; {holder} would delete or rewrite what it reads: "
            "stop that run or wait for it to finish\n"
        )
    result = _featurize(repo, config, copy, "--overwrite", "--teacher", "clip@112")
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {copy}: in use by {who}; featurize would")
    assert _featurize(repo, config, copy).exit_code == 0  # resuming deletes nothing: it may run beside training
    assert [x.token for x in leases(Location(copy))] == ["reader000000"]


def test_a_training_run_holds_a_reader_lease_and_refuses_under_a_destructive_writer(tiny_store, copy, tmp_path):
    from radio.distill.trainer import train_stage
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    config, _ = tiny_store
    fit_store(FeatureStore(copy))
    config = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(copy)}), "out": str(tmp_path / "run")}
    )
    seen: list[list[LeaseInfo]] = []
    train_stage(config, 1, steps=2, on_step=lambda record: seen.append(leases(Location(copy))))
    assert len(seen) == 2 and all(len(s) == 1 for s in seen)
    assert (seen[0][0].kind, seen[0][0].holder, seen[0][0].pid) == ("reader", "distill", os.getpid())
    assert leases(Location(copy)) == []
    with Lease(copy, "writer", "store compact", destructive=True) as w:
        with pytest.raises(LeaseHeld) as e:
            train_stage(config, 1, steps=3)
        assert str(e.value) == f"{copy}: {w.info.describe()} is deleting or rewriting the store; wait for it to finish"


def test_a_lease_is_renewed_while_held_and_gone_when_released(tmp_path):
    with Lease(tmp_path, "reader", "distill", ttl=0.4) as held:
        first = held.info.expires
        time.sleep(0.3)
        (now,) = leases(Location(tmp_path))
        assert now.expires > first and now.token == held.info.token
    assert leases(Location(tmp_path)) == []


def test_of_two_writers_starting_together_exactly_one_holds_the_store(tmp_path):
    for round in range(3):
        store = tmp_path / f"s{round}"
        barrier = threading.Barrier(2)
        outcome: list[str] = []

        def one(name: str) -> None:
            barrier.wait()
            try:
                with Lease(store, "writer", name):
                    outcome.append("held")
                    time.sleep(lease.SETTLE * 2)  # hold it while the other decides
            except LeaseHeld:
                outcome.append("refused")

        threads = [threading.Thread(target=one, args=(n,)) for n in ("featurize", "store compact")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcome) == ["held", "refused"]


def test_writers_exclude_each_other_on_s3(s3_bucket):
    url = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/store.zarr"  # the bucket is shared by the session
    with Lease(url, "writer", "fit-phis", destructive=True) as held:
        with pytest.raises(LeaseHeld, match=rf"^{url}: held by fit-phis \(writer, destructive\) on host "):
            Lease(url, "writer", "featurize").acquire()
        assert [x.token for x in leases(Location(url))] == [held.info.token]
    assert leases(Location(url)) == []


def test_a_reader_of_a_read_only_store_holds_nothing_and_a_writer_is_told(tmp_path, monkeypatch):
    import errno

    from radio.store.objects import StoreReadOnly

    real = os.replace

    def replace(src, dst, *args, **kwargs):  # the file system under tmp_path is read-only
        if str(dst).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with Lease(tmp_path, "reader", "distill") as held:
        assert held.info is None and leases(Location(tmp_path)) == []
    with pytest.raises(
        StoreReadOnly,
        match=rf"^{tmp_path}/leases/writer-.*\.json: cannot write \(Read-only file "
        r"system\); is the store read-only\?$",
    ):
        Lease(tmp_path, "writer", "fit-phis").acquire()
