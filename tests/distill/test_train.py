"""`radio distill` on the sample store with tiny models: it learns, resumes exactly, runs DDP,
trains stage 3's two partitions together, exports, and refuses a store that does not fit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import radio
from radio.cli.main import app
from radio.distill.checks import stage_targets
from radio.distill.loss import GridMismatch, align_features
from radio.distill.run import read_metrics
from radio.distill.trainer import build_student, train_stage
from radio.evaluate.fidelity import fidelity
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store, normalizer_for
from radio.store.split import split_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phis_store(tiny_store):
    config, path = tiny_store
    fit_store(FeatureStore(path))
    return config, path


def _config_file(tmp_path: Path, config, **stage1) -> Path:
    """A pipelines file holding ``config`` as its only pipeline (stage 1 fields overridden)."""
    raw = config.model_dump(mode="json")
    raw["stages"][0].update(stage1)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": raw}}))
    return path


def _cli(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "radio.cli", "distill", "--config", str(cfg), *args]


def test_stage1_losses_fall_and_held_out_fidelity_beats_untrained(phis_store, tmp_path):
    config, path = phis_store
    config = config.model_copy(update={"out": str(tmp_path / "run")})
    store = FeatureStore(path)
    untrained = build_student(store, config).eval()
    result = train_stage(config, 1, steps=40)
    records = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41))
    for name in (k for k in records[0] if "/" in k):
        first = np.mean([r[name] for r in records[:5]])
        last = np.mean([r[name] for r in records[-5:]])
        assert last < first, f"{name}: {first:.4f} → {last:.4f}"
    trained = build_student(store, config)
    from radio.distill.checkpoint import load_weights
    from radio.distill.final_weights import student_state

    trained.load_state_dict(student_state(load_weights(tmp_path / "run" / "stage1" / "final.safetensors")))
    trained.eval()
    ((resolution, keys),) = stage_targets(store, config, 1)
    held = split_rows(store, [t.key for t in keys], config.eval.held_out).held_out
    assert len(held) == config.eval.held_out
    from radio.distill.data import PartitionRows, collate

    ds = PartitionRows(str(path), resolution, keys)
    batch = collate([ds[(r, False)] for r in held])
    with torch.no_grad():
        out_t, out_u = trained(batch["image"]), untrained(batch["image"])
    for t in keys:
        norm = normalizer_for(store, key=t.key)
        target = norm.normalize(batch["targets"][t.key]["features"])
        f_trained = fidelity(target, align_features(out_t.adaptors[t.teacher].features, t.grid, t.exact_grid))
        f_untrained = fidelity(target, align_features(out_u.adaptors[t.teacher].features, t.grid, t.exact_grid))
        assert f_trained > f_untrained, f"{t.key}: {f_trained:.3f} <= {f_untrained:.3f}"
        assert f_trained > 1.0
    assert result.end_step == 40


# mesa: the EMA student is checkpointed (its losses after the resume equal the uninterrupted run's)
@pytest.mark.parametrize(
    "sampling, mesa", [("rows", False), ("blocks", False), ("rows", True)], ids=["rows", "blocks", "mesa"]
)
def test_sigkill_after_checkpoint_then_resume_gives_identical_losses(phis_store, tmp_path, sampling, mesa):
    config, _ = phis_store
    extra = {"mesa": {"enabled": True, "decay": 0.9, "start_step": 2}} if mesa else {}
    cfg = _config_file(tmp_path, config, steps=12, checkpoint_every=4, sampling=sampling, **extra)
    env = os.environ | {"OMP_NUM_THREADS": "2"}
    ref = subprocess.run(
        _cli(cfg, "--stage", "1", "--out", str(tmp_path / "a")), env=env, capture_output=True, text=True
    )
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(
        _cli(cfg, "--stage", "1", "--out", str(tmp_path / "b")),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "b" / "stage1" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(metrics)) < 6:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    logged = len(read_metrics(metrics))
    assert 4 <= logged < 12, "the kill must land after the first checkpoint and before the end"
    resumed = subprocess.run(
        _cli(cfg, "--stage", "1", "--out", str(tmp_path / "b")), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "steps 4→12" in resumed.stdout or "steps 8→12" in resumed.stdout
    a = read_metrics(tmp_path / "a" / "stage1" / "metrics.jsonl")
    b = read_metrics(metrics)
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if "/" in k or k == "total"} == {
            k: v for k, v in rb.items() if "/" in k or k == "total"
        }, ra["step"]
    assert not mesa or all(r["mesa:128:clip/features"] > 0 for r in b[2:]), "MESA ran from step 3"


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(phis_store, tmp_path):
    config, _ = phis_store
    cfg = _config_file(tmp_path, config, steps=200, checkpoint_every=1000)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli(cfg, "--stage", "1", "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    metrics = out / "stage1" / "metrics.jsonl"
    while len(read_metrics(metrics)) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    step = torch.load(out / "stage1" / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= step < 200
    assert stdout.strip() == (
        f"stage 1: stopped by SIGTERM at step {step}/200; checkpoint written to {out / 'stage1'}; "
        "re-run the same command to resume"
    )


def test_ddp_two_processes_agree_with_one_at_step_1(phis_store, tmp_path):
    config, _ = phis_store
    cfg = _config_file(tmp_path, config, steps=1)
    one = subprocess.run(_cli(cfg, "--stage", "1", "--out", str(tmp_path / "one")), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "radio.cli",
            "distill",
            "--config",
            str(cfg),
            "--stage",
            "1",
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-2000:]
    # Only rank 0 prints: one progress line and one final line, not one per rank.
    assert two.stdout.count("stage 1: steps 0→1") == 1, two.stdout
    assert two.stderr.count("distill: step 1 ") == 1, two.stderr[-2000:]
    a = read_metrics(tmp_path / "one" / "stage1" / "metrics.jsonl")[0]
    b = read_metrics(tmp_path / "two" / "stage1" / "metrics.jsonl")[0]
    for name in (k for k in a if "/" in k or k == "total"):
        assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), name


def test_stage3_trains_both_partitions_every_step_without_interpolating_sam(phis_store, tmp_path):
    config, path = phis_store
    config = config.model_copy(update={"out": str(tmp_path / "run")})
    store = FeatureStore(path)
    parts = stage_targets(store, config, 3)
    assert [r for r, _ in parts] == [192, 256]
    for resolution, keys in parts:
        for t in keys:
            if t.key.startswith("sam@"):
                assert t.exact_grid and t.grid == (resolution // 16, resolution // 16)
    train_stage(config, 1, steps=2)
    train_stage(config, 2, steps=2)
    train_stage(config, 3, steps=3)
    records = read_metrics(tmp_path / "run" / "stage3" / "metrics.jsonl")
    assert len(records) == 3
    for r in records:
        assert "192:sam@192/features" in r and "256:sam@256/features" in r
        assert "256:clip@168/features" in r  # 16x16 student features shrunk to CLIP's 12x12
    result = CliRunner().invoke(app, ["plot", "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    from PIL import Image

    for stage in (1, 2, 3):
        png = tmp_path / "run" / f"stage{stage}" / "losses.png"
        assert str(png) in result.stdout and Image.open(png).size[0] > 1000
    with pytest.raises(
        GridMismatch, match=r"sam@256: student grid 12x12 != target grid 16x16 \(SAM targets are never interpolated\)"
    ):
        align_features(torch.zeros(1, 12, 12, 4), (16, 16), exact=True, key="sam@256")


def test_export_matches_training_model_and_denormalizes_into_teacher_space(phis_store, tmp_path):
    config, path = phis_store
    config = config.model_copy(update={"out": str(tmp_path / "run")})
    train_stage(config, 1, steps=30)
    runner = CliRunner()
    cfg = _config_file(tmp_path, config)
    result = runner.invoke(app, ["export", "--config", str(cfg), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    model = radio.load(tmp_path / "export")
    store = FeatureStore(path)
    student = build_student(store, config)
    from radio.distill.checkpoint import load_weights
    from radio.distill.final_weights import student_state

    student.load_state_dict(student_state(load_weights(tmp_path / "run" / "stage1" / "final.safetensors")))
    student.eval()
    for size in [(224, 224), (432, 432), (1024, 1024), (192, 320)]:
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
        out = model(x)
        with torch.no_grad():
            ref = student(x)
        assert out.features.shape == (1, size[0] // 16, size[1] // 16, 64)
        assert torch.equal(out.features, ref.features)
        assert out.summary.shape == (1, ref.summary.shape[1] * 64)
        for name, a in out.adaptors.items():
            norm = model.normalizers[name]
            assert torch.allclose(norm.normalize(a.features), ref.adaptors[name].features, atol=1e-4)
    # De-normalized adaptor features on training rows are in the teacher's space: they explain
    # the raw teacher targets better than the teacher's mean would.
    ((resolution, keys),) = stage_targets(store, config, 1)
    rows = split_rows(store, [t.key for t in keys], config.eval.held_out).train[:16]
    from radio.distill.data import PartitionRows, collate

    batch = collate([PartitionRows(str(path), resolution, keys)[(r, False)] for r in rows])
    out = model(batch["image"])
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert {t["name"]: t["target_key"] for t in meta["teachers"]} == {
        "clip": "clip@112",
        "siglip": "siglip@112",
        "dinov2": "dinov2@112",
        "sam": "sam@128",
    }
    for t in keys:
        raw = batch["targets"][t.key]["features"]
        pred = align_features(out.adaptors[t.teacher].features, t.grid, t.exact_grid)
        assert fidelity(raw, pred) > 1.0, t.key
        assert (pred.mean((0, 1, 2)) - raw.mean((0, 1, 2))).abs().mean() < 0.5 * raw.std()


def test_each_store_stage_mismatch_is_one_line(phis_store, tmp_path):
    import shutil

    config, path = phis_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    store = FeatureStore(copy)
    shutil.rmtree(copy / "normalizers" / "clip")
    store.array("dinov2@168", "complete")[0] = 0
    raw = config.model_dump(mode="json")
    raw["store"]["path"] = str(copy)
    raw["out"] = str(tmp_path / "run")
    raw["teachers"]["sam"]["targets"]["sam@176"] = {"resolution": 176, "mosaic": 1, "canvas": 256}
    raw["stages"][1]["partitions"][0]["targets"] = ["clip@168", "dinov2@168", "sam@176"]
    raw["stages"][0]["partitions"][0]["resolution"] = 144  # sam@128 (8x8) under a 9x9 student grid
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": raw}}))
    runner = CliRunner()
    result = runner.invoke(app, ["distill", "--config", str(cfg), "--stage", "2"])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert "\n" not in err
    assert err.startswith(
        f"error: stage 2 does not match the store {copy}: no PHI-S of clip covering clip@168 (run `radio fit-phis`); "
        "dinov2@168 is incomplete (2/3 tars); missing target key sam@176. The store has: clip@112 "
        "(8x8, complete, no PHI-S), clip@168 (12x12, complete, no PHI-S), "
    )
    result = runner.invoke(app, ["distill", "--config", str(cfg), "--stage", "1"])
    assert result.exit_code == 2
    assert "sam@128 grid 8x8 != student grid 9x9 at 144 px (SAM targets are never interpolated)" in result.stderr
    # A later stage needs the previous stage's weights (or --init).
    fresh = _config_file(tmp_path / "fresh", config) if (tmp_path / "fresh").mkdir() is None else None
    result = runner.invoke(app, ["distill", "--config", str(fresh), "--stage", "2", "--out", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: stage 2 starts from stage 1's final weights {tmp_path / 'empty' / 'stage1' / 'final.safetensors'}, "
        "which do not exist; run `radio distill --stage 1` first or pass --init CKPT"
    )


def test_torch_compile_trains_like_eager(phis_store, tmp_path):
    """`compile: true` in a stage: the compiled student computes the same losses (one smoke run:
    compiling costs about a minute on 2 CPU cores)."""
    config, _ = phis_store
    eager_cfg = config.model_copy(update={"out": str(tmp_path / "eager")})
    stage = config.stages[0].model_copy(update={"compile": True})
    compiled_cfg = config.model_copy(update={"out": str(tmp_path / "compiled"), "stages": (stage, *config.stages[1:])})
    eager = train_stage(eager_cfg, 1, steps=2).losses
    compiled = train_stage(compiled_cfg, 1, steps=2).losses
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_export_needs_only_the_run_folder(phis_store, tmp_path):
    import shutil

    config, path = phis_store
    store = tmp_path / "store.zarr"
    shutil.copytree(path, store)
    config = config.model_copy(
        update={"out": str(tmp_path / "run"), "store": config.store.model_copy(update={"path": str(store)})}
    )
    train_stage(config, 1, steps=2)
    shutil.move(store, tmp_path / "moved.zarr")  # trained on a cluster, exported on a laptop
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--run",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "export"),
            "--config",
            str(tmp_path / "no-such.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    model = radio.load(tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    sam = next(t for t in meta["teachers"] if t["name"] == "sam")
    assert sam["target_key"] == "sam@128" and sam["feature_dim"] == 32 and sam["provenance"]["mosaic"] == 2
    moved = FeatureStore(tmp_path / "moved.zarr")
    expected = normalizer_for(moved, key="clip@112", stream="features", mode="phis")
    assert torch.equal(model.normalizers["clip"].inverse, expected.inverse)
    assert model(torch.rand(1, 3, 64, 64)).adaptors["clip"].features.shape == (1, 4, 4, 64)


def test_distill_trains_on_a_sam_key_featurized_with_another_mosaic(phis_store, tmp_path):
    from radio.distill.checks import mosaic_notes

    config, path = phis_store
    raw = config.model_dump()
    raw["teachers"]["sam"]["targets"]["sam@128"]["mosaic"] = 1  # the store holds mosaic 2
    other = type(config).model_validate(raw)
    store = FeatureStore(path)
    assert [t.key for t in stage_targets(store, other, 1)[0][1]][-1] == "sam@128"  # accepted, not rejected
    assert mosaic_notes(store, other, 1) == [
        "sam@128 was featurized with mosaic 2, the config says 1; training on it as it is "
        "(a mosaic changes only how images were packed on the teacher's canvas)"
    ]
    assert mosaic_notes(store, config, 1) == []
