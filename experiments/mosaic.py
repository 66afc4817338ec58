"""Mosaic cuts SAM forwards by k² (paper §4.3).

Claim: SAM only runs on its fixed canvas (1024 px); a student-resolution image padded onto it
wastes most of the forward pass. Tiling k×k images into one canvas gives each image its own
tile, so one SAM forward serves k² images: k² fewer forwards and about k² less SAM time per
image, and each tile's features are (close to) what SAM gives the image alone at the same place.

Set-up: the tiny random-init SAM (canvas 256 px) featurizes 64 px crops of the bundled photos
with `radio featurize --mosaic k` for k = 1, 2, 4 (one store each). The featurize report counts
the teacher's inputs (canvases) and its compute time per target key. The tile check rebuilds a
window's crops from the store's manifest, runs SAM once per image on a canvas holding only that
image at the same tile and offset, and compares with the stored (fp16) tile features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from . import common
from .common import Outcome, Scale

NAME = "mosaic"
CLAIM = (
    "Tiling k×k images into one SAM canvas cuts SAM forward passes, and SAM time per image, by k², "
    "while each tile's features stay close to a per-image run at the same placement (paper §4.3)."
)
RESOLUTION = 64
CANVAS = 256
KS = (1, 2, 4)


def build(root: Path, k: int, scale: Scale):
    teachers = {
        "sam": {
            "model": "sam_tiny",
            "targets": {f"sam@{RESOLUTION}": {"resolution": RESOLUTION, "mosaic": k, "canvas": CANVAS}},
        }
    }
    stages = [
        {"steps": 1, "partitions": [{"resolution": RESOLUTION, "batch_size": 1, "targets": [f"sam@{RESOLUTION}"]}]}
    ]
    config = common.pipeline(NAME, root, teachers, stages, held_out=0, shard_rows=16, batch_size=16)
    return common.with_changes(config, store=config.store.model_dump() | {"path": str(root / f"store-k{k}.zarr")})


def run(out: Path, scale: Scale) -> Outcome:
    work = common.fresh(out / "work")
    common.sample_shards(work, images=scale.pick(128, 16), shard_size=scale.pick(32, 16))
    table, checks, per_k = [], {}, {}
    for k in KS:
        config = build(work, k, scale)
        with common.Timer() as t:
            report = common.featurize(config)
        key = f"sam@{RESOLUTION}"
        images = sum(r.valid for r in report.results)
        forwards = sum(r.teacher_inputs.get(key, 0) for r in report.results)
        seconds = sum(r.compute_seconds.get(key, 0.0) for r in report.results)
        checks[k] = tile_check(config, key, k, scale.pick(8, 2))
        per_k[k] = {
            "images": images,
            "forwards": forwards,
            "expected_forwards": expected_forwards(config, k),
            "featurize_seconds": seconds,
            "wall_seconds": t.seconds,
        }
    forward_ms = sam_forward_ms(build(work, 1, scale), scale.pick(64, 16))
    load = os.getloadavg()[0]  # timings on a shared machine: say how shared
    base = per_k[1]
    for k in KS:
        p = per_k[k]
        p["sam_forward_ms_per_image"] = forward_ms[k]
        table.append(
            {
                "mosaic k": k,
                "images": p["images"],
                "SAM forwards": p["forwards"],
                "expected": p["expected_forwards"],
                "forwards saved": base["forwards"] / max(1, p["forwards"]),
                "ideal k²": k * k,
                "featurize ms / image": 1000 * p["featurize_seconds"] / max(1, p["images"]),
                "SAM forward ms / image": forward_ms[k],
                "SAM speed-up": forward_ms[1] / forward_ms[k],
                "tile vs alone: rel. error": checks[k]["relative_error"],
                "cosine": checks[k]["cosine"],
            }
        )
    forwards_ok = all(per_k[k]["forwards"] == per_k[k]["expected_forwards"] for k in KS)
    speed = [forward_ms[1] / forward_ms[k] for k in KS]
    agrees = forwards_ok and speed[1] > 1 and speed[2] > speed[1]
    verdict = (
        f"SAM forwards for {base['images']} images: "
        + ", ".join(f"k={k}: {per_k[k]['forwards']}" for k in KS)
        + f" (= Σ over store windows of ⌈valid / k²⌉: {'yes' if forwards_ok else 'NO'}). SAM forward time per "
        f"image falls {speed[1]:.1f}× at k=2 and {speed[2]:.1f}× at k=4 (ideal 4× and 16×; best of 3 interleaved runs, "
        f"1-minute load average {load:.1f} on {os.cpu_count()} cores). Tile features "
        "against a per-image canvas at the same placement: relative error "
        + ", ".join(f"k={k}: {checks[k]['relative_error']:.2g}" for k in KS)
        + ". "
    )
    verdict += (
        "k=1 matches up to fp16 storage; for k>1 the other tiles reach each image through SAM's global-attention "
        "blocks, so tiles are close to, not equal to, per-image runs (the paper's claim is that this costs "
        "little; we can only measure it with random-init SAM weights here, whose attention is not SAM's). "
    )
    if load > (os.cpu_count() or 1):
        verdict += (
            "With the machine this oversubscribed the per-image times are noisy (a ratio beyond its ideal k² "
            "is noise, not a gain); the forward counts are exact. "
        )
    if speed[2] < 12:
        verdict += (
            "The time saving is below k² because the tiny SAM's forward on a 256 px canvas is cheap enough on CPU "
            "that fixed per-call costs weigh in; with SAM at 1024 px the forward dominates (README benchmark, "
            "SAM-B: 14.8× at k=4). The whole featurize time per image (crop, resize, moments, writes) falls less, "
            "because those costs do not shrink with k. "
        )
    _picture(out / f"{NAME}.png", per_k, checks)
    return Outcome(
        NAME,
        CLAIM,
        table,
        agrees,
        verdict,
        f"{NAME}.png",
        extra={"per_k": per_k, "tile_check": checks, "load_average": load},
    )


def sam_forward_ms(config, n: int, repeats: int = 3) -> dict[int, float]:
    """SAM forward time per image for each k: ``n`` of the store's crops (from its manifest) tiled
    with :mod:`radio.featurize.mosaic` as the worker tiles them, one canvas per forward (as on a
    GPU at SAM-H size), best of ``repeats`` (the CPU is shared)."""
    import time

    import torch

    from radio.featurize import mosaic
    from radio.featurize.teachers import create_teacher

    teacher = create_teacher(config.teachers["sam"].model, config.teachers["sam"].weights)
    keys, x = _crops(config, n)
    canvases = {}
    for k in KS:
        offsets = mosaic.tile_offsets(config.featurize.seed, keys, CANVAS, k, RESOLUTION, teacher.spec.patch)
        canvases[k] = mosaic.compose(teacher.normalize(x), k, CANVAS, offsets)
    best = {k: float("inf") for k in KS}
    with torch.inference_mode():
        teacher(torch.zeros(1, 3, CANVAS, CANVAS))  # warm-up
        for _ in range(repeats):  # interleaved, so every k sees the same (shared) machine
            for k in KS:
                t0 = time.perf_counter()
                for c in canvases[k]:
                    teacher(c[None])
                best[k] = min(best[k], time.perf_counter() - t0)
    return {k: 1000 * best[k] / len(keys) for k in KS}


def _crops(config, n: int):
    """Keys and ``[n, 3, s, s]`` pixels in [0, 1] of the first ``n`` valid rows' stored crops."""
    import torch

    from radio.shards.crops import CropBox, crop_resize
    from radio.shards.tar import ShardReader
    from radio.store.layout import FeatureStore

    rows = [r for r in FeatureStore(config.store.path).manifest().to_pylist() if r["valid"]][:n]
    pixels: dict[str, np.ndarray] = {}
    for tar in dict.fromkeys(r["tar"] for r in rows):
        pixels |= {s.key: cast(np.ndarray, s.pixels) for s in ShardReader(tar) if s.valid}  # valid: decoded
    crops = [
        crop_resize(pixels[r["key"]], CropBox(r["crop_x"], r["crop_y"], r["crop_w"], r["crop_h"]), RESOLUTION)
        for r in rows
    ]
    return [r["key"] for r in rows], torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def expected_forwards(config, k: int) -> int:
    """Σ over store windows (one Zarr shard of a tar's rows) of ceil(valid images / k²): the worker
    fills canvases window by window, so only a window's last canvas may be partly empty."""
    from collections import Counter

    from radio.store.layout import FeatureStore

    fs = FeatureStore(config.store.path)
    windows = Counter(
        (r["tar_index"], r["ordinal"] // fs.plan.shard_rows) for r in fs.manifest().to_pylist() if r["valid"]
    )
    return sum(-(-n // (k * k)) for n in windows.values())


def tile_check(config, key: str, k: int, n: int) -> dict:
    """Compare the stored tile features of the first ``n`` valid rows of a window with SAM run on a
    canvas holding only that image at the same tile and offset. Returns the mean relative error
    ‖tile − alone‖² / ‖alone‖² and the mean cosine similarity over tokens."""
    import torch

    from radio.featurize import mosaic
    from radio.featurize.teachers import create_teacher
    from radio.shards.crops import CropBox, crop_resize
    from radio.shards.tar import ShardReader
    from radio.store.layout import FeatureStore

    fs = FeatureStore(config.store.path)
    manifest = fs.manifest().to_pylist()
    window = [r for r in manifest if r["tar_index"] == 0 and r["ordinal"] < fs.plan.shard_rows and r["valid"]]
    pixels = {s.key: cast(np.ndarray, s.pixels) for s in ShardReader(window[0]["tar"]) if s.valid}  # valid: decoded
    teacher = create_teacher(config.teachers["sam"].model, config.teachers["sam"].weights)
    seed = config.featurize.seed
    stored = fs.array(key, "features")
    errors, cosines = [], []
    for slot_index, row in enumerate(window[:n]):
        crop = crop_resize(
            pixels[row["key"]], CropBox(row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"]), RESOLUTION
        )
        x = teacher.normalize(torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() / 255.0)
        slot = slot_index % (k * k)  # the worker fills canvases with the window's valid images in order
        offsets = np.zeros((slot + 1, 2), dtype=np.int64)
        offsets[slot] = mosaic.tile_offsets(seed, [row["key"]], CANVAS, k, RESOLUTION, teacher.spec.patch)[0]
        images = torch.zeros(slot + 1, *x.shape[1:])
        images[slot] = x[0]
        with torch.inference_mode():
            grid = teacher(mosaic.compose(images, k, CANVAS, offsets)).features
        alone = mosaic.split(grid, slot + 1, k, CANVAS, RESOLUTION, offsets)[slot].double()
        tile = torch.from_numpy(np.asarray(stored[row["row"]], dtype=np.float64))
        errors.append(float(((tile - alone) ** 2).sum() / (alone**2).sum()))
        cosines.append(
            float(torch.nn.functional.cosine_similarity(tile.flatten(0, 1), alone.flatten(0, 1), dim=-1).mean())
        )
    return {
        "rows": [r["row"] for r in window[:n]],
        "relative_error": float(np.mean(errors)),
        "cosine": float(np.mean(cosines)),
        "per_image_relative_error": errors,
    }


def _picture(path: Path, per_k: dict, checks: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(per_k)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar([str(k) for k in ks], [per_k[k]["forwards"] for k in ks], color="tab:blue")
    axes[0].set(title="SAM forward passes", xlabel="mosaic k", ylabel="canvases")
    ms = [per_k[k]["sam_forward_ms_per_image"] for k in ks]
    axes[1].bar([str(k) for k in ks], ms, color="tab:orange", label="measured")
    axes[1].plot([str(k) for k in ks], [ms[0] / (k * k) for k in ks], "k--o", label="ideal 1/k²")
    axes[1].set(title="SAM forward time per image", xlabel="mosaic k", ylabel="ms")
    axes[1].legend(fontsize=8)
    axes[2].bar([str(k) for k in ks], [checks[k]["relative_error"] for k in ks], color="tab:green")
    axes[2].set(title="tile vs per-image canvas, same placement", xlabel="mosaic k", ylabel="relative error")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
