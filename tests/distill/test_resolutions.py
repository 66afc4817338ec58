"""Stochastic resolutions (issue 26 part 3): `partitions[].resolutions`, per-step size draws,
token budgets, exact keys skipped at sizes their grid does not fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config.schema import PartitionConfig
from radio.distill.data import StepBatches
from radio.distill.resolutions import SizeSchedule, size_draws

LOW = (128, 192, 224, 256, 384, 432)  # C-RADIOv4's low set


def _validate(tmp_path, repo, mutate) -> tuple[int, str, object]:
    raw = yaml.safe_load((repo / "pipelines.yaml").read_text())
    raw = {"default": "tiny", "pipelines": {"tiny": copy.deepcopy(raw["pipelines"]["tiny"])}}
    mutate(raw["pipelines"]["tiny"]["stages"][0]["partitions"][0])
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["config", "validate", "--config", str(path)])
    return result.exit_code, result.stderr.strip(), path


def _swap(**fields):
    def mutate(part: dict) -> None:
        part.pop("resolution")
        part.update(fields)

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: p.update(resolutions=[128, 192]),
            "pipelines.tiny.stages.0.partitions.0: set exactly one of resolution and resolutions",
        ),
        (
            _swap(resolutions=[128, 200]),
            "pipelines.tiny.stages.0.partitions.0.resolutions: resolutions: size 200 is not a positive multiple of 16",
        ),
        (
            _swap(resolutions=[128, 128]),
            "pipelines.tiny.stages.0.partitions.0.resolutions: resolutions [128, 128] names a size twice",
        ),
        (
            _swap(resolutions=[192, 256]),  # the partition trains sam@128: a 8x8 grid
            "pipelines.tiny: stages.0.partitions.0.resolutions: sam@128 has an exact 8x8 grid and "
            "accepts only 128 px, which [192, 256] does not hold",
        ),
        (
            _swap(resolutions=[128, 192], targets=["sam@128"]),
            "pipelines.tiny: stages.0.partitions.0.resolutions: no key of the partition trains at [192] px",
        ),
        (
            _swap(resolutions=[128, 192], tokens_per_step=64),
            "pipelines.tiny.stages.0.partitions.0: set exactly one of batch_size and tokens_per_step",
        ),
        (
            lambda p: p.update(resolutions=[128, 192], resolution=None, batch_size=None, tokens_per_step=100),
            "pipelines.tiny.stages.0.partitions.0: tokens_per_step 100 is less than one 192 px image (144 tokens)",
        ),
    ],
    ids=["both", "not-16", "twice", "exact-key-fits-none", "idle-size", "batch-and-tokens", "budget-too-small"],
)
def test_validation_is_one_line_naming_the_field(tmp_path, repo, mutate, message):
    code, err, path = _validate(tmp_path, repo, mutate)
    assert code == 2
    assert err == f"error: {path}: {message}"


def test_a_set_the_exact_key_fits_validates(tmp_path, repo):
    code, err, _ = _validate(tmp_path, repo, _swap(resolutions=[128, 192, 256]))
    assert code == 0, err


def test_v4_pipelines_draw_the_c_radio_v4_sets(repo):
    from radio.config import load_pipeline

    for name in ("c-radio-v4-so400m", "c-radio-v4-h"):
        config = load_pipeline(repo / "pipelines.yaml", name)
        low, high = config.stages[2].partitions
        assert low.resolutions == LOW and high.resolutions == (512, 768, 1024, 1152)
        # SAM3's mosaic keys fit one size of each set; the others train at every size
        assert config.exact_key_sizes(low) == {"sam3@378": (432,)}
        assert config.exact_key_sizes(high) == {"sam3@896": (1024,)}
    tiny = load_pipeline(repo / "pipelines.yaml", "tiny")
    assert all(p.resolutions is None for s in tiny.stages for p in s.partitions)


def test_draws_are_a_pure_function_of_seed_stage_partition_step():
    steps = np.arange(4000)
    a = size_draws(0, 3, 0, steps, LOW)
    assert np.array_equal(a[1234:1300], size_draws(0, 3, 0, np.arange(1234, 1300), LOW))  # a resumed range
    assert np.array_equal(a, size_draws(0, 3, 0, steps, LOW))
    for other in (size_draws(1, 3, 0, steps, LOW), size_draws(0, 2, 0, steps, LOW), size_draws(0, 3, 1, steps, LOW)):
        assert (other != a).mean() > 0.7  # another seed, stage or partition: another sequence
    counts = np.array([(a == s).sum() for s in LOW])
    assert counts.min() > 4000 / 6 * 0.85 and counts.max() < 4000 / 6 * 1.15  # uniform over the set


def _budget(world: int, start: int = 0, stop: int = 40, rank: int = 0) -> tuple[StepBatches, SizeSchedule]:
    part = PartitionConfig(resolutions=(128, 256), tokens_per_step=64 * 6, targets=("k@1",))  # 6 or 1 image
    sched = SizeSchedule(part, 0, 1, 0, stop, world)
    return StepBatches(np.arange(50), 1, 7, 0, start, stop, rank, world, True, sizes=sched), sched


def test_a_token_budget_gives_each_size_its_batch_and_visits_every_image_once_per_epoch():
    sampler, sched = _budget(1)
    items = list(sampler)
    assert {(b[0][2], len(b)) for b in items} == {(128, 6), (256, 1)}
    rows = [r for b in items for r, _, _ in b]
    assert sorted(rows[:50]) == list(range(50))  # the first epoch, whatever the batch sizes were
    assert [b[0][2] for b in items] == [sched.size(s) for s in range(40)]
    # two ranks: equal shares of a batch rounded down to a multiple of 2 (1 image at 256 px on 2 ranks: 0)
    with pytest.raises(ValueError, match=r"^tokens_per_step 384 gives no image per rank on 2 ranks \(256 px: 0\)"):
        _budget(2)


def test_a_resumed_sampler_yields_the_same_items():
    full = list(_budget(1)[0])
    assert list(_budget(1, start=17)[0]) == full[17:]


@pytest.fixture(scope="module")
def phis_store(tiny_store):
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    config, path = tiny_store
    fit_store(FeatureStore(path))  # idempotent: the normalizers the other distill tests use
    return config, path


def _stochastic(config, tmp_path, **part):
    stage = config.stages[0]
    fields = {"resolution": None, "resolutions": (128, 192)} | part
    p = stage.partitions[0].model_copy(update=fields)
    stage = stage.model_copy(update={"partitions": (PartitionConfig(**p.model_dump()),), "checkpoint_every": 3})
    return config.model_copy(update={"out": str(tmp_path / "run"), "stages": (stage,)})


@pytest.mark.slow
def test_tiny_trains_at_drawn_sizes_and_skips_sam_where_its_grid_does_not_fit(phis_store, tmp_path):
    from radio.distill.run import read_metrics
    from radio.distill.trainer import train_stage

    config = _stochastic(phis_store[0], tmp_path)
    train_stage(config, 1, steps=4)
    records = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    drawn = size_draws(config.stages[0].seed, 1, 0, np.arange(4), (128, 192)).tolist()
    assert [r["size_0"] for r in records] == drawn and set(drawn) == {128, 192}
    for r, size in zip(records, drawn):
        assert f"{size}:clip@112/features" in r and f"{size}:dinov2@112/features" in r  # resized to 7x7
        assert (f"{size}:sam@128/features" in r) == (size == 128)  # SAM's 8x8 grid: only at 128 px
        assert np.isfinite(r["total"])


@pytest.mark.slow
def test_a_token_budget_run_interrupted_and_resumed_computes_the_same_steps(phis_store, tmp_path):
    from radio.distill.run import read_metrics
    from radio.distill.trainer import train_stage

    config = _stochastic(phis_store[0], tmp_path, batch_size=None, tokens_per_step=8 * 64)  # 8 or 3 images
    ref = config.model_copy(update={"out": str(tmp_path / "ref")})
    train_stage(ref, 1, steps=6)

    def stop_after_checkpoint(record: dict) -> None:
        if record["step"] == 4:  # the checkpoint of step 3 is on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage(config, 1, steps=6, on_step=stop_after_checkpoint)
    assert train_stage(config, 1, steps=6).start_step == 3
    a = read_metrics(tmp_path / "ref" / "stage1" / "metrics.jsonl")
    b = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 7))
    keep = ("total", "size_0")
    assert [{k: v for k, v in r.items() if "/" in k or k in keep} for r in a] == [
        {k: v for k, v in r.items() if "/" in k or k in keep} for r in b
    ]
    assert {r["size_0"] for r in a} == {128, 192}
