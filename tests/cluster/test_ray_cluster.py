"""`radio featurize --address` (and `RAY_ADDRESS`) on a real two-node Ray cluster: a head (`ray start --head`) and a
worker (`ray start --address`) on this machine, each with its own temp dir, ended by PID.

Only ``--address`` decides where the job runs: the driver attaches to the cluster (it is one of
the cluster's jobs, and the cluster still has two nodes afterwards) and starts no local instance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # its own cluster, not the session's local Ray instance

RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns token auth on for local clusters; every node and driver must agree, so all are off.
ENV = os.environ | {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ADDRESS": "",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "OMP_NUM_THREADS": "1",
}

_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.time() + 90
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.5)
drivers = [j["DriverPid"] for j in ray._private.state.jobs()]
print(json.dumps({"nodes": sum(n["Alive"] for n in ray.nodes()), "driver_pids": drivers}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(address: str, expect: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _NODES, address, str(expect)], capture_output=True, text=True, env=ENV, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM to the `ray start --block` PID (it stops what it started); SIGKILL its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def two_node_cluster():
    # Short temp dirs: Ray's Unix socket paths must stay under 108 bytes.
    dirs = [tempfile.mkdtemp(prefix="rayh", dir="/tmp"), tempfile.mkdtemp(prefix="rayw", dir="/tmp")]
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--num-gpus=0",
        "--disable-usage-stats",
        f"--object-store-memory={150 * 2**20}",
    ]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir={dirs[0]}",
                    *common,
                ],
                env=ENV,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [RAY, "start", f"--address={address}", f"--temp-dir={dirs[1]}", *common],
                env=ENV,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        assert _nodes(address, 2)["nodes"] == 2
        yield address, procs
    finally:
        for p in reversed(procs):
            _end(p)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_featurize_attaches_to_a_two_node_cluster_and_the_store_verifies(two_node_cluster, repo, tmp_path):
    from radio.shards.sampledata import write_sample_data

    address, procs = two_node_cluster
    write_sample_data(tmp_path / "shards", images=16, shard_size=8, seed=5, corrupt=0)
    store = tmp_path / "store.zarr"
    radio = str(Path(sys.executable).with_name("radio"))
    base = [
        radio,
        "featurize",
        "--config",
        str(repo / "pipelines.yaml"),
        "--pipeline",
        "tiny",
        "--data",
        str(tmp_path / "shards" / "*.tar"),
        "--store",
        str(store),
    ]
    # One teacher through --address, another through RAY_ADDRESS alone: either attaches.
    drivers = []
    for extra, env in (
        (["--teacher", "dinov2", "--address", address], ENV),
        (["--teacher", "clip"], ENV | {"RAY_ADDRESS": address}),
    ):
        run = subprocess.Popen(
            [*base, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, out[-2000:] + err[-3000:]
        drivers.append(run.pid)

    after = _nodes(address, 2)
    assert after["nodes"] == 2 and all(p.poll() is None for p in procs)  # the cluster is untouched
    assert set(drivers) <= set(after["driver_pids"])  # both featurize drivers were this cluster's jobs
    verify = subprocess.run([radio, "store", "verify", str(store)], capture_output=True, text=True, env=ENV)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    from radio.store.layout import FeatureStore

    fs = FeatureStore(store)
    keys = [k for k in fs.target_keys if k.startswith(("dinov2", "clip"))]
    tars = len(list((tmp_path / "shards").glob("*.tar")))
    assert {k.split("@")[0] for k in keys} == {"dinov2", "clip"}
    assert all(fs.completed(k).all() and len(fs.completed(k)) == tars for k in keys)  # every tar, every key
    assert sum(fs.manifest().column("valid").to_pylist()) == 16
