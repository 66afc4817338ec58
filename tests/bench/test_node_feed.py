"""bench/node_feed.py (issue 27 part 1): its arithmetic (FLOPs → images/s → GB/s → cores) on fixed
inputs, and `--tiny --json` end to end on the shipped pipelines."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from radio.distill.flops import student_flops

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("node_feed", REPO / "bench" / "node_feed.py")
assert _spec is not None and _spec.loader is not None
nf = importlib.util.module_from_spec(_spec)
sys.modules["node_feed"] = nf  # dataclasses look their module up by name
_spec.loader.exec_module(nf)


def test_vit_flops_match_the_published_count_of_vit_b_at_224():
    # timm / fvcore: vit_base_patch16_224 is 17.58 GMACs (its classifier head included); 1 CLS token.
    # The plan prices a step with the trainer's own count (distill/flops.py, checked against
    # torch's flop counter in tests/distill/test_no_stalls.py).
    macs = student_flops("b", 224, prefix_tokens=1, backward=False) / 2
    assert macs == pytest.approx(17.58e9, rel=0.01)


def test_images_per_s_spend_the_node_flops_on_every_partitions_batch():
    flops = {432: 3.0e12, 1024: 24.0e12}  # per image
    parts = [nf.Part(432, 1024, 7_660_000), nf.Part(1024, 128, 33_000_000)]
    node = 8 * 400e12
    images = nf.stage_images_per_s(parts, flops.__getitem__, node)
    steps = node / (1024 * 3.0e12 + 128 * 24.0e12)  # 0.5208 steps/s
    assert images == pytest.approx([1024 * steps, 128 * steps])
    assert sum(i * flops[p.resolution] for i, p in zip(images, parts)) == pytest.approx(node)
    gb = nf.target_gb_per_s(parts, images)
    raw = (1024 * 7_660_000 + 128 * 33_000_000) * steps / 1e9
    assert gb == pytest.approx({"fp16": raw, "int8": raw / 2, "int8_r8": raw / 8})


def test_row_cost_recovers_a_per_row_cost_and_a_bandwidth():
    a, bw = 40e-6, 8e9
    rate = {b: 1 / (a + b / bw) for b in (655_360, 327_680)}
    got = nf.row_cost(rate[655_360], 655_360, rate[327_680], 327_680)
    assert got == pytest.approx((a, bw))
    # noise that makes the bigger row cheaper: no negative cost, the faster byte rate
    assert nf.row_cost(1000, 600_000, 900, 300_000) == (0.0, 6e8)


def test_loader_cores_add_pixels_targets_and_each_gpus_bookkeeping():
    parts = [nf.Part(256, 1024, 3_000, (("a", 2_000), ("b", 1_000)))]
    cores = nf.loader_cores(
        parts, [1000.0], {256: 250.0}.__getitem__, "int8", (1e-4, 1e9), step_s=0.002, steps_per_s=1.0, gpus=8
    )
    pixels, targets, bookkeeping = 1000 / 250, 1000 * (2e-4 + (2_000 + 1_000) * 0.5 / 1e9), 8 * 0.002
    assert cores == pytest.approx(pixels + targets + bookkeeping)


def test_cheapest_takes_the_least_preparation_that_fits_cores_and_disk():
    gb = {"fp16": 60.0, "int8": 30.0, "int8_r8": 7.5}
    need = {m: {c: {"decode": 400, "draft": 300, "jpeg": 100, "raw": 40}[m] for c in gb} for m in nf.MODES}
    assert nf.cheapest(gb, need, cores=112, disk_gbps=25) == ("jpeg", "int8_r8")
    assert nf.cheapest(gb, need, cores=500, disk_gbps=100) == ("decode", "fp16")
    assert nf.cheapest(gb, need, cores=10, disk_gbps=100) == ("none", "none")


@pytest.mark.slow
def test_tiny_json_plans_every_shipped_pipeline(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "node_feed.py"),
            "--tiny",
            "--json",
            "--cores",
            "64",
            "--config",
            str(REPO / "pipelines.yaml"),
        ],
        cwd=tmp_path,  # its temporary store goes here
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["gpus"] == 8 and out["gpu_tflops"] == 400 and out["cores"] == 64
    rates = out["pixels"]["modes"]["256"]["images_per_s"]
    assert set(rates) == set(nf.MODES) and all(v > 0 for v in rates.values())
    assert rates["raw"] > rates["decode"]  # a copy beats a decode, on any machine
    assert {(r["pipeline"], r["stage"]) for r in out["plan"]} == {
        (p, s)
        for p in ("radio-amp-b", "radio-amp-l", "radio-amp-h", "radio-amp-g", "c-radio-v4-so400m", "c-radio-v4-h")
        for s in (1, 2, 3)
    }
    b1 = next(r for r in out["plan"] if r["pipeline"] == "radio-amp-b" and r["stage"] == 1)
    # ViT-B at 256 px (256 patches + 8 CLS/registers), forward + backward, on 8 x 400 TFLOP/s
    assert b1["images_per_s"] == pytest.approx(8 * 400e12 / student_flops("b", 256, prefix_tokens=8))
    # radio-amp's 256 px keys: DFN CLIP-H 16x16x1280 + 1024, SigLIP so400m 16x16x1152 + 1152,
    # DINOv2-g 16x16x1536 + 1536, SAM-H 16x16x1280 (no summary), 2 bytes a value
    per_sample = 2 * (256 * 1280 + 1024 + 256 * 1152 + 1152 + 256 * 1536 + 1536 + 256 * 1280)
    assert b1["target_gb_per_s"]["fp16"] == pytest.approx(b1["images_per_s"] * per_sample / 1e9)
    assert b1["target_gb_per_s"]["int8_r8"] == pytest.approx(b1["target_gb_per_s"]["fp16"] / 8)
    assert all(b1["cores"]["decode"][c] > b1["cores"]["raw"][c] for c in nf.CODECS)
    assert b1["pixels"] in (*nf.MODES, "none")
    assert run.stdout.count("| radio-amp-b | 1 (256) |") == 1
