"""`radio distill` as the SLURM script launches it: one `torchrun` agent per node, `--nnodes 2`,
a c10d rendezvous on the first node, one process per node. Here both "nodes" are this machine
(127.0.0.1); the run trains a few steps and must equal a single-process run step for step."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from radio.distill.run import read_metrics
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store

pytestmark = pytest.mark.slow

STEPS = 3
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def pipelines(tiny_store, tmp_path_factory) -> Path:
    config, path = tiny_store
    fit_store(FeatureStore(path))
    raw = config.model_dump(mode="json")
    raw["stages"][0]["steps"] = STEPS
    out = tmp_path_factory.mktemp("torchrun") / "pipelines.yaml"
    out.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": raw}}))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_torchrun_with_c10d_rendezvous_equals_one_process(pipelines, tmp_path):
    distill = ["-m", "radio.cli", "distill", "--config", str(pipelines), "--stage", "1"]
    one = subprocess.run(
        [sys.executable, *distill, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert one.returncode == 0, one.stderr[-2000:]

    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = []
    for node in range(2):
        # is_host: both "nodes" have the endpoint's address; on a cluster only the first one does.
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "radio-test",
            "--rdzv-conf",
            f"is_host={'true' if node == 0 else 'false'}",
            "--max-restarts",
            "0",
            "--signals-to-handle",
            "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
            *distill,
            "--out",
            str(tmp_path / "two"),
        ]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
    outputs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outputs):
        assert p.returncode == 0, err[-3000:]

    a = read_metrics(tmp_path / "one" / "stage1" / "metrics.jsonl")
    b = read_metrics(tmp_path / "two" / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == STEPS
    for ra, rb in zip(a, b):
        for name in (k for k in ra if "/" in k or k == "total"):
            assert rb[name] == pytest.approx(ra[name], rel=1e-4, abs=1e-6), (ra["step"], name)
    assert (tmp_path / "two" / "stage1" / "final.safetensors").is_file()
