"""Shared fixtures: the repo's pipelines file, sample shards made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> Path:
    """A small DataComp-layout folder: 24 photos, every exotic and corrupt kind, 4 shards."""
    from radio.store.sampledata import CORRUPT_KINDS, EXOTIC_KINDS, write_sample_data

    out = tmp_path_factory.mktemp("sample")
    write_sample_data(out, images=24, shard_size=12, seed=3, corrupt=len(CORRUPT_KINDS), exotic=len(EXOTIC_KINDS))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting one costs ~4 s)."""
    import os

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             object_store_memory=200 * 1024 * 1024)  # fmt: skip
    yield ray
    ray.shutdown()
