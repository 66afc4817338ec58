"""PHI-S key weighting (issue 23 §3): ``count`` against ``equal`` on real-size teachers.

Featurizes a few real photos (scikit-image's, as `radio sample-data` writes them) through the
project's own teacher registry, featurize stages and store, with REAL-SIZE RANDOM-INIT teachers
(no weights can be downloaded here):

- SAM-B (``sam_b``): ``sam@256`` (mosaic 4), ``sam@432`` (mosaic 2), ``sam@1024`` (mosaic 1);
- DINOv2-B (``dinov2_b_reg``): ``dinov2@224``, ``dinov2@378``, ``dinov2@896``.

Then fits both key weightings (:func:`radio.store.normalizers.fit_store`) and reports per key:

- the key's variance in its teacher's normalized space (mean per-channel variance, tr(T Σ_k Tᵀ)/C);
- the share of variance int8 compact form retains there (:mod:`radio.store.codec`'s ``int8``,
  4σ clip: 1 − MSE / Var over the key's stored vectors, Var per channel about the key's mean).

Random-init features are not trained features: the numbers say how the weighting moves each
key's scale, not what a released checkpoint gives. CPU: 4.5 minutes for 2 images, 25 for 8
(2 heavily shared cores; 5 GB at the default batch 1).

    PYTHONPATH=$PWD .venv/bin/python bench/phis_weighting.py [--images 8] [--threads 2] [--json]

Prints a table; with ``--json`` the last line is one JSON object (also written to
bench/results/phis_weighting.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from radio.config.schema import PipelineConfig
from radio.featurize.graph import run_local
from radio.featurize.job import _settings, prepare, select
from radio.shards.sampledata import write_sample_data
from radio.store.codec import decode, encode, fit_codec, variance_retained
from radio.store.layout import FeatureStore
from radio.store.normalizers import KEY_WEIGHTINGS, fit_store, load_teacher_phis

TEACHERS = {
    "sam": {
        "model": "sam_b",
        "targets": {
            "sam@256": {"resolution": 256, "mosaic": 4},
            "sam@432": {"resolution": 432, "mosaic": 2},
            "sam@1024": {"resolution": 1024, "mosaic": 1},
        },
    },
    "dinov2": {
        "model": "dinov2_b_reg",
        "targets": {
            "dinov2@224": {"resolution": 224},
            "dinov2@378": {"resolution": 378},
            "dinov2@896": {"resolution": 896},
        },
    },
}


def _config(tmp: Path, shards: Path, batch: int) -> PipelineConfig:
    keys = [k for t in TEACHERS.values() for k in t["targets"]]
    return PipelineConfig.model_validate(
        {
            "data": {"shards": [str(shards / "*.tar")]},
            "store": {"path": str(tmp / "store.zarr"), "compressor": "none"},
            "featurize": {"batch_size": batch},
            "teachers": {name: {"weights": None, **t} for name, t in TEACHERS.items()},
            "stages": [{"steps": 1, "partitions": [{"resolution": 256, "batch_size": 1, "targets": keys}]}],
        }
    )


def _features(store: FeatureStore, key: str) -> torch.Tensor:
    """The key's valid rows' features ``[N·h·w, C]`` (float64)."""
    rows = [r["row"] for r in store.manifest().to_pylist() if r["valid"]]
    x = store.array(key, "features").get_orthogonal_selection((rows,))
    return torch.from_numpy(np.asarray(x, np.float64).reshape(-1, x.shape[-1]))


def _int8_retained(phis, x: torch.Tensor) -> float:
    codec = fit_codec(phis, "int8")  # 4σ clip (the default)
    y = (x - torch.from_numpy(phis.mean)) @ torch.from_numpy(phis.transform).T
    return variance_retained(y, decode(codec, encode(codec, y)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8, help="photos featurized (one tar)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument(
        "--batch",
        type=int,
        default=1,
        help="featurize batch (images; mosaic teachers: tiles); 16 needs ~22 GB for SAM-B at 1024",
    )
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_sample_data(tmp / "shards", images=args.images, shard_size=args.images, seed=5, failed=0)
        config = _config(tmp, tmp / "shards", args.batch)
        start = time.perf_counter()
        store, items = prepare(config, select(config))
        for result in run_local(store, items, _settings(config), config.featurize.batch_size):
            if result.error is not None:
                raise SystemExit(f"featurize failed: {result.error}")
        featurize_s = time.perf_counter() - start

        results: dict[str, dict] = {}
        features = {k: _features(store, k) for t in TEACHERS.values() for k in t["targets"]}
        for weighting in KEY_WEIGHTINGS:
            for r in fit_store(store, key_weighting=weighting):
                if r.stream != "features":
                    continue
                phis = load_teacher_phis(store, r.teacher, "features", r.fingerprint)
                for key, variance in zip(r.keys, r.key_variances):
                    entry = results.setdefault(key, {"teacher": r.teacher, "vectors": int(features[key].shape[0])})
                    entry[weighting] = {"variance": variance, "int8_retained": _int8_retained(phis, features[key])}
        rows = int(sum(r["valid"] for r in store.manifest().to_pylist()))

    out = {
        "images": rows,
        "featurize_s": featurize_s,
        "teachers": {n: t["model"] for n, t in TEACHERS.items()},
        "keys": results,
    }
    print(f"PHI-S key weighting: {rows} photos, real-size random-init teachers, featurize {featurize_s:.0f} s")
    print(f"{'key':<12} {'vectors':>8}  {'var count':>9} {'var equal':>9}  {'int8 count':>10} {'int8 equal':>10}")
    for key, e in sorted(results.items(), key=lambda kv: (kv[1]["teacher"], int(kv[0].split("@")[1]))):
        c, q = e["count"], e["equal"]
        print(
            f"{key:<12} {e['vectors']:>8}  {c['variance']:>9.3f} {q['variance']:>9.3f}  "
            f"{c['int8_retained']:>10.4%} {q['int8_retained']:>10.4%}"
        )
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    (folder / "phis_weighting.json").write_text(json.dumps(out, indent=2))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
