"""PHI-S benchmarks, measured in one run.

1. Moments accumulation throughput (as featurize does it: fp16 targets → float64 (count, mean, M2)
   per window, merged with Chan's formula) ÷ a plain float64 Xᵀ X of the same data, the
   arithmetic bound. Ideal 1.0.
2. `fit-phis` wall time for C = 1536 (DINOv2-g width): merge per-tar moments, eigendecompose,
   build the exact Hadamard, write the normalizer into a Zarr store.

    .venv/bin/python bench/phis_bench.py [--channels 1536] [--tokens 32768]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from radio.store.layout import FeatureStore, Plan
from radio.store.moments import Moments
from radio.store.normalizers import fit_store


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=32768, help="vectors accumulated (rows × tokens per row)")
    ap.add_argument("--window", type=int, default=8192, help="vectors per accumulation step (one Zarr shard of rows)")
    ap.add_argument("--tars", type=int, default=16, help="per-tar moments merged by fit-phis")
    args = ap.parse_args()
    c, n = args.channels, args.tokens
    rng = np.random.default_rng(0)
    x16 = (rng.normal(size=(n, c)) * np.logspace(0, -3, c) + 5).astype(np.float16)

    def accumulate():
        m = None
        for i in range(0, n, args.window):
            part = Moments.of(x16[i : i + args.window].astype(np.float64))
            m = part if m is None else m.merge(part)
        return m

    x64 = x16.astype(np.float64)
    t_acc = _best(accumulate)
    t_gram = _best(lambda: x64.T @ x64)
    ratio = t_gram / t_acc

    with tempfile.TemporaryDirectory() as d:
        store = FeatureStore.create(
            Path(d) / "s.zarr", Plan.build([(f"t{i}.tar", 0, 8, None) for i in range(args.tars)], 8), {}
        )
        store.create_target(
            "bench@1",
            grid=(1, 1),
            feature_dim=c,
            summary_dim=None,
            provenance={"grid": [1, 1], "feature_dim": c, "summary_dim": None},
            compressor="none",
        )
        m = accumulate()
        for t in range(args.tars):
            store.write_moments("bench@1", t, "features", m)
            store.mark_complete("bench@1", t)
        start = time.perf_counter()
        (report,) = fit_store(store, ["bench@1"])
        t_fit = time.perf_counter() - start

    results = {
        "channels": c,
        "tokens": n,
        "accumulate_s": t_acc,
        "gram_s": t_gram,
        "ratio": ratio,
        "fit_phis_s": t_fit,
        "tars": args.tars,
        "hadamard": report.hadamard,
    }
    print(
        f"moments accumulation ({n} vectors × {c} channels, windows of {args.window}): {n / t_acc:,.0f} vectors/s; "
        f"plain float64 XᵀX {n / t_gram:,.0f} vectors/s; ratio {ratio:.3f} (ideal 1.0)"
    )
    print(
        f"fit-phis for C = {c} ({args.tars} per-tar moments merged, eigh, {report.hadamard}, Zarr write): {t_fit:.2f} s"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "phis.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
