"""scripts/gpu_check.sh --tiny: the GPU check's CPU mode, so CI keeps the script from rotting."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.slow


def test_gpu_check_tiny_prints_one_json_line(repo, tmp_path):
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [
            "bash",
            str(repo / "scripts" / "gpu_check.sh"),
            "--tiny",
            "--images",
            "24",
            "--steps",
            "3",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["mode"] == "tiny" and result["device"] == "cpu"
    assert set(result["teacher_images_per_s"]) == {"dinov2@56", "siglip@56", "sam@64"}
    assert all(v > 0 for v in result["teacher_images_per_s"].values())
    assert result["featurize_over_bare"] > 0 and result["trainer_images_per_s"] > 0
    assert 0 <= result["data_wait_fraction"] <= 1 and result["train_steps"] == 3
    assert result["mfu"] is None and result["peak_bf16_tflops"] is None  # no GPU peak on a CPU
    assert result["trainer_tflops_per_s"] == pytest.approx(
        result["student_tflops_per_step"] * result["trainer_images_per_s"] / 8  # the tiny batch
    )
    assert result["loader_workers"] == 2 and result["peak_gpu_bytes"] == {"bare_forward": 0, "trainer": 0}
    pixels = result["student_pixels"]  # the same stage from the tars and from stored JPEG views
    assert pixels["none"]["images_per_s"] == result["trainer_images_per_s"]
    assert pixels["jpeg"]["images_per_s"] > 0 and 0 <= pixels["jpeg"]["data_wait"] <= 1
    assert pixels["jpeg"]["decoded_on"] == "cpu"


def test_peak_bf16_names_the_lent_gpus_model(repo):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", repo / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.peak_bf16("NVIDIA H200") == 989e12
    assert module.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert module.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert module.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert module.peak_bf16("NVIDIA GeForce GTX 1080") is None
