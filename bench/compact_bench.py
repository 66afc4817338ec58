"""Compact-target benchmarks: what each codec saves in bytes and costs in accuracy, in one run.

1. Real-size random-init teachers (DINOv2-B at 224, SAM-B at 256 as 4×4 mosaics on its 1024
   canvas), featurized by the real worker into a Zarr store. PHI-S is fitted on the first half of
   the rows; on the other half, per codec: bytes per sample ÷ raw fp16, and variance retained
   1 − MSE / Var in PHI-S space. Codecs: int8, fp8 (e4m3), int8 rank C/4 (= 1/8 of raw bytes)
   and int8 with the rank that `--variance 0.99` picks. Also the on-disk bytes of the store's
   compact arrays after `store compact` (int8), and the spectrum (variance share of the top k).
2. The tiny pipeline from the same seed: stage 1 trained on raw targets and on int8 targets
   (every stage-1 key, features and summary compacted); held-out F[X] per key against the raw
   targets, in PHI-S space, and the ratio of the geometric means.

    .venv/bin/python bench/compact_bench.py [--images 64] [--steps 40] [--quick] [--json]

Writes bench/results/compact.json; ``--json`` prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from radio.featurize.graph import run_local
from radio.featurize.job import plan_rows
from radio.featurize.records import FeaturizeSettings, KeyJob, WorkItem
from radio.featurize.teachers import get_spec
from radio.shards.sampledata import write_sample_data
from radio.shards.tar import expand_shards
from radio.store.codec import decode, encode, fit_codec, variance_retained
from radio.store.compact import compact_store_key
from radio.store.inspect import store_info
from radio.store.layout import FeatureStore
from radio.store.moments import Moments
from radio.store.normalizers import fit_store
from radio.store.phis import fit_phis


def _featurize(tmp: Path, model: str, job: KeyJob, images: int, batch: int) -> FeatureStore:
    shards = tmp / f"{model}_shards"
    write_sample_data(shards, images=images, shard_size=max(8, images // 4), seed=0, failed=0)
    store = FeatureStore.create(tmp / f"{model}.zarr", plan_rows(expand_shards([str(shards / "*.tar")]), 8), {})
    spec = get_spec(model)
    g = job.resolution // spec.patch
    store.create_target(
        job.key,
        grid=(g, g),
        feature_dim=spec.feature_dim,
        summary_dim=spec.summary_dim,
        provenance={"grid": [g, g], "feature_dim": spec.feature_dim, "summary_dim": spec.summary_dim, "model": model},
    )
    items = [WorkItem(tp.index, model, model, None, (job,)) for tp in store.plan.tars]
    for r in run_local(store, items, FeaturizeSettings(), batch):
        assert r.error is None, r.error
    return store


def _valid_features(store: FeatureStore, key: str) -> np.ndarray:
    """``[N, tokens, C]`` float64 of the valid rows, in row order."""
    m = store.manifest()
    rows = np.asarray(m.column("row").to_pylist())[np.asarray(m.column("valid").to_pylist(), bool)]
    f = store.array(key, "features")[:][np.sort(rows)]
    return f.reshape(len(rows), -1, f.shape[-1]).astype(np.float64)


def _codec_rows(x: np.ndarray) -> dict:
    """Fit PHI-S on the first half of the rows, measure every codec on the second half."""
    half = len(x) // 2
    fit, test = x[:half].reshape(-1, x.shape[-1]), x[half:].reshape(-1, x.shape[-1])
    p = fit_phis(Moments.of(fit))
    y = torch.from_numpy(p.normalize(test)).float()
    c = x.shape[-1]
    out = {
        "channels": c,
        "fit_vectors": len(fit),
        "test_vectors": len(test),
        "codecs": {},
        "spectrum": {f"top{k}": p.variance_share(k) for k in (1, 10, 100, c // 4, c // 2) if k <= c},
    }
    cut = np.cumsum(p.eigenvalues) / p.eigenvalues.sum()
    out["rank_for"] = {str(v): int(np.searchsorted(cut, v) + 1) for v in (0.9, 0.95, 0.99, 0.999)}
    plans = {
        "int8": dict(name="int8"),
        "fp8": dict(name="fp8"),
        f"int8 rank {c // 4}": dict(name="int8", rank=c // 4),
        "int8 variance 0.99": dict(name="int8", variance=0.99),
    }
    for label, kw in plans.items():
        codec = fit_codec(p, **kw)
        decoded = decode(codec, encode(codec, y))
        out["codecs"][label] = {
            "rank": codec.rank,
            "bytes_vs_raw_fp16": codec.stored_channels / (2 * c),
            "variance_retained": variance_retained(y, decoded),
        }
    return out


def real_size(tmp: Path, images: int, quick: bool) -> dict:
    teachers = (
        [("dinov2_tiny", KeyJob("dinov2@112", 112), 16), ("sam_tiny", KeyJob("sam@128", 128, 2, 256), 4)]
        if quick
        else [("dinov2_b_reg", KeyJob("dinov2_b@224", 224), 16), ("sam_b", KeyJob("sam_b@256", 256, 4, 1024), 16)]
    )
    results = {}
    for model, job, batch in teachers:
        store = _featurize(tmp, model, job, images, batch)
        r = _codec_rows(_valid_features(store, job.key))
        fit_store(store)
        compact_store_key(store, job.key)
        info = {k.key: k for k in store_info(store.path)["keys"]}[job.key]
        r["store_int8"] = {
            "raw_disk_bytes_per_sample": info.stored_bytes_per_sample,
            "compact_disk_bytes_per_sample": info.compact_stored_bytes_per_sample,
            "disk_ratio": info.compact_stored_bytes_per_sample / info.stored_bytes_per_sample,
            "variance_retained_in_sample": info.variance_retained,
        }
        results[job.key] = r | {"model": model, "images": images}
    return results


def _held_out_fidelity(config, store_path: Path, weights: Path) -> dict[str, float]:
    """F[X] per stage-1 key on the held-out rows, against the raw targets, in PHI-S space."""
    from radio.distill.checkpoint import load_weights
    from radio.distill.checks import stage_targets
    from radio.distill.data import PartitionRows, collate
    from radio.distill.loss import align_features
    from radio.distill.trainer import build_student
    from radio.evaluate.fidelity import fidelity
    from radio.store.normalizers import normalizer_for
    from radio.store.split import split_rows

    store = FeatureStore(store_path)
    student = build_student(store, config)
    student.load_state_dict(load_weights(weights))
    student.eval()
    ((resolution, keys),) = stage_targets(store, config, 1)
    held = split_rows(store, [t.key for t in keys], config.eval.held_out).held_out
    batch = collate([PartitionRows(str(store_path), resolution, keys)[(int(r), False)] for r in held])
    with torch.no_grad():
        out = student(batch["image"])
    result = {}
    for t in keys:
        target = normalizer_for(store, key=t.key).normalize(batch["targets"][t.key]["features"])
        result[t.key] = fidelity(target, align_features(out.adaptors[t.teacher].features, t.grid, t.exact_grid))
    return result


def tiny_training(tmp: Path, steps: int) -> dict:
    from radio.config import load_pipeline
    from radio.distill.checks import stage_targets
    from radio.distill.run import RunFolder
    from radio.distill.trainer import train_stage
    from radio.featurize.job import _settings, prepare, select

    root = Path(__file__).resolve().parents[1]
    write_sample_data(tmp / "tiny_shards", images=40, shard_size=16, seed=11, corrupt=2)
    config = load_pipeline(
        root / "pipelines.yaml",
        "tiny",
        data=str(tmp / "tiny_shards" / "*.tar"),
        store=str(tmp / "raw.zarr"),
        out=str(tmp / "run_raw"),
    )
    store, items = prepare(config, select(config))
    assert all(r.error is None for r in run_local(store, items, _settings(config), config.featurize.batch_size))
    fit_store(store)
    shutil.copytree(tmp / "raw.zarr", tmp / "int8.zarr")
    compact = FeatureStore(tmp / "int8.zarr")
    ((_, keys),) = stage_targets(compact, config, 1)
    for t in keys:
        compact_store_key(compact, t.key, summary=t.summary)
    int8_config = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(tmp / "int8.zarr")}), "out": str(tmp / "run_int8")}
    )
    train_stage(config, 1, steps=steps)
    train_stage(int8_config, 1, steps=steps)
    raw_f = _held_out_fidelity(config, tmp / "raw.zarr", RunFolder(tmp / "run_raw").stage(1).weights)
    int8_f = _held_out_fidelity(config, tmp / "raw.zarr", RunFolder(tmp / "run_int8").stage(1).weights)

    def gm(v: dict[str, float]) -> float:
        return math.exp(np.mean([math.log(x) for x in v.values()]))

    return {
        "steps": steps,
        "raw": raw_f,
        "int8": int8_f,
        "geometric_mean_raw": gm(raw_f),
        "geometric_mean_int8": gm(int8_f),
        "ratio": gm(int8_f) / gm(raw_f),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64, help="images per real-size teacher")
    ap.add_argument("--steps", type=int, default=40, help="stage-1 steps of each tiny student")
    ap.add_argument("--quick", action="store_true", help="tiny teachers only (a smoke run; figures not meaningful)")
    ap.add_argument("--part", choices=("all", "real", "tiny"), default="all", help="run one half only")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args()
    results: dict = {"real_size": {}, "tiny_training": None}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.part in ("all", "real"):
            results["real_size"] = real_size(tmp, args.images, args.quick)
        if args.part in ("all", "tiny"):
            results["tiny_training"] = tiny_training(tmp, args.steps)
    for key, r in results["real_size"].items():
        print(
            f"{key} ({r['model']}, C = {r['channels']}; PHI-S fitted on {r['fit_vectors']} vectors, "
            f"measured on {r['test_vectors']} others):"
        )
        for label, c in r["codecs"].items():
            print(
                f"  {label:<22} bytes ÷ raw fp16 {c['bytes_vs_raw_fp16']:.4f}   variance retained {c['variance_retained']:.5f}"
            )
        s = r["store_int8"]
        print(
            f"  store compact int8 on disk: {s['compact_disk_bytes_per_sample']:.0f} B/sample vs raw "
            f"{s['raw_disk_bytes_per_sample']:.0f} (zstd) = {s['disk_ratio']:.3f}"
        )
        print(
            "  spectrum (variance share): "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["spectrum"].items())
            + "; rank for "
            + ", ".join(f"{k}: {v}" for k, v in r["rank_for"].items())
        )
    t = results["tiny_training"] or {
        "steps": 0,
        "raw": {},
        "geometric_mean_raw": math.nan,
        "geometric_mean_int8": math.nan,
        "ratio": math.nan,
    }
    print(f"tiny stage 1, {t['steps']} steps, held-out F[X] vs raw targets (PHI-S space):")
    for k in t["raw"]:
        print(f"  {k:<12} raw-trained {t['raw'][k]:.4f}   int8-trained {t['int8'][k]:.4f}")
    print(
        f"  geometric mean: raw {t['geometric_mean_raw']:.4f}, int8 {t['geometric_mean_int8']:.4f}, "
        f"ratio {t['ratio']:.4f} (target ≥ 0.99)"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"compact{'' if args.part == 'all' else '_' + args.part}.json").write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
