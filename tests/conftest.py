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
    from radio.shards.sampledata import CORRUPT_KINDS, EXOTIC_KINDS, write_sample_data

    out = tmp_path_factory.mktemp("sample")
    write_sample_data(out, images=24, shard_size=12, seed=3, corrupt=len(CORRUPT_KINDS), exotic=len(EXOTIC_KINDS))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting one costs ~4 s)."""
    import os

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
    )
    yield ray
    ray.shutdown()


def featurize_in_process(config) -> None:
    """Run every (tar, teacher) of ``config`` in this process (no Ray): the same decode and
    teacher stages the Ray graph runs, for tests that need a store but are not about Ray."""
    from radio.featurize.graph import run_local
    from radio.featurize.job import _settings, prepare, select

    store, items = prepare(config, select(config))
    for result in run_local(store, items, _settings(config), config.featurize.batch_size):
        assert result.error is None, result.error


def margin_pipeline(repo: Path, data: str, store: str, batch_size: int, **raw_fields):
    """`tiny` with ``featurize.shift_margin`` 1 (the shift loss's tests and benchmark): tiny's CLIP
    at 168 px and a SAM mosaic of 1 at 192 px, whose 256 px tile has padding for the margin
    (tiny's own SAM keys fill their tiles), in one stage of one 192 px partition of
    ``batch_size`` (tiny's stage 2 otherwise); ``raw_fields`` replace top-level fields."""
    from radio.config import load_pipeline

    raw = load_pipeline(repo / "pipelines.yaml", "tiny", data=data, store=store).model_dump()
    raw["featurize"]["shift_margin"] = 1
    raw["teachers"] = {
        "clip": {"model": "clip_tiny", "targets": {"clip@168": {"resolution": 168}}},
        "sam": {"model": "sam_tiny", "targets": {"sam@192": {"resolution": 192, "mosaic": 1, "canvas": 256}}},
    }
    stage = dict(raw["stages"][1])
    stage["partitions"] = [{"resolution": 192, "batch_size": batch_size, "targets": ["clip@168", "sam@192"]}]
    raw["stages"] = [stage]
    return type(load_pipeline(repo / "pipelines.yaml", "tiny")).model_validate(raw | raw_fields)


@pytest.fixture(scope="session")
def margin_config():
    """:func:`margin_pipeline`, for test modules."""
    return margin_pipeline


@pytest.fixture(scope="session")
def featurize_here():
    """:func:`featurize_in_process`, for test modules (a `conftest` import is ambiguous)."""
    return featurize_in_process


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, repo):
    """The `tiny` pipeline featurized on 40 sample photos (+ a few bad samples): (config, store path)."""
    from radio.config import load_pipeline
    from radio.shards.sampledata import write_sample_data

    root = tmp_path_factory.mktemp("tiny")
    write_sample_data(root / "shards", images=40, shard_size=16, seed=11, corrupt=2)
    config = load_pipeline(
        repo / "pipelines.yaml",
        "tiny",
        data=str(root / "shards" / "*.tar"),
        store=str(root / "store.zarr"),
        out=str(root / "run"),
    )
    featurize_in_process(config)
    return config, root / "store.zarr"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on localhost for the whole session (moto's server on 127.0.0.1, a free
    port, ended by PID); the AWS_* variables point at it. Yields the endpoint URL."""
    from s3local import local_s3_server

    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    """A fresh bucket on the session's S3 server: ``s3://NAME``."""
    import uuid

    import s3fs

    name = f"radio-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"
