"""The GPU check: featurize with real-size teachers, then train a ViT-B student; one JSON line.

Run through ``scripts/gpu_check.sh`` (which only runs ``make install`` when no venv exists).
Full mode (a GPU node, < 10 min on one GPU): random-init DINOv2-g-reg at 224, SigLIP so400m at
224 and SAM-H at 256 with mosaic 4 over ``--images`` (2000) sample photos, through the real
Ray graph; each teacher's bare forward on the same device; then 200 steps of stage 1 for a
ViT-B student in bf16 with 4 loader workers, once decoding the tars and once from stored JPEG
views (``student_pixels: jpeg``, decoded on the GPU with nvJPEG). ``--tiny``: tiny teachers and student on CPU, a
few dozen images and steps, so CI keeps this script from rotting.

The last stdout line is one JSON object: teacher images/s per key (teacher-side time), the
featurize pipeline images/s ÷ the bare forwards back to back, trainer images/s and data-wait
fraction (also per student-pixel mode: ``student_pixels.none`` and ``.jpeg``), peak GPU memory (0 on CPU) and the trainer's model FLOPs utilisation: the student's
FLOPs per step (``radio.distill.flops.student_flops``, forward + backward) ÷ step time ÷ the
GPU's peak dense bf16 FLOP/s (:data:`PEAK_BF16`; null on CPU or an unlisted GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

FULL = {
    "teachers": {
        "dinov2": {"model": "dinov2_g_reg", "targets": {"dinov2_g@224": {"resolution": 224}}},
        "siglip": {"model": "siglip_so400m_378", "targets": {"siglip@224": {"resolution": 224}}},
        "sam": {"model": "sam_h", "targets": {"sam_h@256": {"resolution": 256, "mosaic": 4}}},
    },
    "student": {"size": "b"},
    "resolution": 256,
    "train_batch": 256,
    "featurize_batch": 256,
    "shard_rows": 64,
    "shard_size": 512,  # tars of two whole groups (256 rows): only the last tar ends in a short batch
}
TINY = {
    "teachers": {
        "dinov2": {"model": "dinov2_tiny", "targets": {"dinov2@56": {"resolution": 56}}},
        "siglip": {"model": "siglip_tiny", "targets": {"siglip@56": {"resolution": 56}}},
        "sam": {"model": "sam_tiny", "targets": {"sam@64": {"resolution": 64, "mosaic": 4, "canvas": 256}}},
    },
    "student": {"size": "tiny", "cpe_max_size": 256, "adaptor_hidden": 64},
    "resolution": 64,
    "train_batch": 8,
    "featurize_batch": 16,
    "shard_rows": 8,
    "shard_size": 8,
}


# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets; the first
# name found in torch.cuda.get_device_name() wins (so "H100 PCIe" before "H100").
PEAK_BF16 = {
    "B200": 2250e12,
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def peak_bf16(device_name: str) -> float | None:
    """The peak dense bf16 FLOP/s of a GPU named ``device_name`` (None: not in the table)."""
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def pipeline_yaml(mode: dict, root: Path, steps: int) -> Path:
    """A pipelines file with one pipeline, ``gpu_check``, for this mode."""
    keys = [k for t in mode["teachers"].values() for k in t["targets"]]
    pipeline = {
        "description": "scripts/gpu_check.py",
        "data": {"shards": [str(root / "shards" / "*.tar")]},
        "store": {"path": str(root / "store.zarr"), "shard_rows": mode["shard_rows"]},
        "featurize": {"seed": 0, "batch_size": mode["featurize_batch"]},
        "teachers": mode["teachers"],
        "student": mode["student"],
        "normalization": "phis",
        "stages": [
            {
                "steps": steps,
                "checkpoint_every": steps,
                "partitions": [{"resolution": mode["resolution"], "batch_size": mode["train_batch"], "targets": keys}],
                "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 0.0},
            }
        ],
        "out": str(root / "run"),
    }
    path = root / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"default": "gpu_check", "pipelines": {"gpu_check": pipeline}}))
    return path


def bare_forward(
    model: str, resolution: int, mosaic: int | None, canvas: int, batch: int, device: torch.device, seconds: float
) -> float:
    """Images/s of the teacher alone on random pixels already at its input geometry (bf16 on GPU)."""
    from radio.featurize.teachers import create_teacher
    from radio.featurize.worker import autocast_for

    teacher = create_teacher(model, device=device)
    if mosaic:
        per, x = mosaic * mosaic, torch.randn(max(1, batch // (mosaic * mosaic)), 3, canvas, canvas, device=device)
    else:
        per, x = 1, torch.randn(batch, 3, resolution, resolution, device=device)
    images, start = 0, None
    with torch.inference_mode(), autocast_for(device):
        teacher(x)  # warm-up
        _sync(device)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            teacher(x)
            _sync(device)
            images += len(x) * per
    rate = images / (time.perf_counter() - start)
    del teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny teachers and student on CPU (CI)")
    ap.add_argument("--images", type=int, help="sample photos to featurize [2000; tiny 32]")
    ap.add_argument("--steps", type=int, help="stage-1 training steps [200; tiny 4]")
    ap.add_argument("--workers", type=int, help="DataLoader workers [4; tiny 2]")
    ap.add_argument("--out", type=Path, help="work folder [a temporary one]")
    args = ap.parse_args()
    mode = TINY if args.tiny else FULL
    images = args.images or (32 if args.tiny else 2000)
    steps = args.steps or (4 if args.tiny else 200)
    workers = args.workers or (2 if args.tiny else 4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.tiny and device.type != "cuda":
        sys.exit("error: the full GPU check needs a CUDA device; use --tiny on CPU")

    from radio.config import load_pipeline
    from radio.distill.flops import student_flops
    from radio.distill.run import RunFolder, read_metrics
    from radio.distill.trainer import train_stage
    from radio.featurize.job import run_featurize, summarize
    from radio.featurize.pixels import add_pixels, plan_pixels
    from radio.featurize.teachers import get_spec
    from radio.shards.sampledata import write_sample_data
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    root = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    write_sample_data(root / "shards", images=images, shard_size=mode["shard_size"], seed=0, failed=0)
    config = load_pipeline(pipeline_yaml(mode, root, steps), "gpu_check")

    # Steady-state pipeline rate: images of the tars finished after the first one, over the time
    # from the first tar's last result to the last tar's (Ray start and teacher loading excluded).
    done: dict[int, int] = {}
    finished: list[tuple[float, int]] = []

    def on_result(r, i, n) -> None:
        done[r.tar_index] = done.get(r.tar_index, 0) + 1
        if done[r.tar_index] == len(mode["teachers"]):
            finished.append((time.perf_counter(), r.valid))

    start = time.perf_counter()
    report = run_featurize(config, on_result=on_result)
    featurize_s = time.perf_counter() - start
    if not report.ok:
        sys.exit(f"error: featurize failed: {[r.error for r in report.failed] or report.unreadable}")
    per_key = summarize(report)["per_key"]
    valid = max(int(d["images"]) for d in per_key.values())
    if len(finished) >= 2:
        pipeline_rate = sum(v for _, v in finished[1:]) / max(1e-9, finished[-1][0] - finished[0][0])
    else:
        pipeline_rate = valid / featurize_s

    bare = {}
    for t in mode["teachers"].values():
        for key, target in t["targets"].items():
            spec = get_spec(t["model"])
            bare[key] = bare_forward(
                t["model"],
                target["resolution"],
                target.get("mosaic"),
                target.get("canvas", spec.input_size),
                mode["featurize_batch"],
                device,
                seconds=2.0 if args.tiny else 10.0,
            )
    bare_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    combined = 1.0 / sum(1.0 / r for r in bare.values())

    fit_store(FeatureStore(config.store.path))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # no on_step hook: it would make every step a log step (a host sync per step)
    train_stage(config, 1, workers=workers, device=str(device))
    records = read_metrics(RunFolder(config.out).stage(1).metrics)
    steady = records[min(len(records) - 1, max(1, len(records) // 10)) :]  # skip warm-up (and compile) steps
    trainer_rate = statistics.median(r["images_per_s"] for r in steady)

    # The same stage from stored JPEG views (featurize.student_pixels: jpeg, added to the store
    # without teachers), decoded on the device with nvJPEG: images/s and data wait beside the tar decode.
    store = FeatureStore(config.store.path)
    plan_pixels(store, "jpeg", config.featurize.jpeg_quality, [mode["resolution"]])
    add_pixels(store, [mode["resolution"]])
    jpeg_config = config.model_copy(update={"out": str(Path(config.out).with_name("run_jpeg"))})
    train_stage(jpeg_config, 1, workers=workers, device=str(device))
    jpeg_records = read_metrics(RunFolder(jpeg_config.out).stage(1).metrics)
    jpeg_steady = jpeg_records[min(len(jpeg_records) - 1, max(1, len(jpeg_records) // 10)) :]
    step_flops = student_flops(mode["student"]["size"], mode["resolution"], batch=mode["train_batch"])
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = peak_bf16(device_name) if device.type == "cuda" else None
    achieved = step_flops * trainer_rate / mode["train_batch"]  # FLOP/s: FLOPs per step / step time
    result = {
        "mode": "tiny" if args.tiny else "full",
        "device": device_name,
        "images": valid,
        "teacher_images_per_s": {k: d["images"] / max(1e-9, d["compute_seconds"]) for k, d in per_key.items()},
        "bare_forward_images_per_s": bare,
        "featurize_images_per_s": pipeline_rate,
        "featurize_over_bare": pipeline_rate / combined,
        "featurize_seconds": featurize_s,
        "trainer_images_per_s": trainer_rate,
        "student_tflops_per_step": step_flops / 1e12,
        "trainer_tflops_per_s": achieved / 1e12,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "mfu": achieved / peak if peak else None,
        "data_wait_fraction": statistics.mean(r["data_wait"] for r in steady),
        "student_pixels": {
            "none": {"images_per_s": trainer_rate, "data_wait": statistics.mean(r["data_wait"] for r in steady)},
            "jpeg": {
                "images_per_s": statistics.median(r["images_per_s"] for r in jpeg_steady),
                "data_wait": statistics.mean(r["data_wait"] for r in jpeg_steady),
                "decoded_on": str(device),
            },
        },
        "train_steps": len(records),
        "loader_workers": workers,
        "peak_gpu_bytes": {
            "bare_forward": bare_peak,
            "trainer": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
