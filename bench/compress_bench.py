"""Token merging benchmark, measured in one run.

Strided ToMe of B images of N = h·w tokens × C channels down to T tokens (default: 32 × 64² ×
1280 → 256, RADIO-AMP-H at 1024 px to the paper's 256-token budget), ÷ the time of one
``[B, N, C]`` cosine-similarity matmul (N × N per image: what plain all-pairs matching would
cost, the unavoidable core of any similarity-based merge). Below 1.0 means the whole merge,
all rounds included, costs less than that one matmul: the strided split scores only
sources × destinations (3072 × 1024 here) instead of N × N.

    .venv/bin/python bench/compress_bench.py [--batch 32] [--grid 64] [--channels 1280] [--tokens 256] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from radio.compress import merge_tokens


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--grid", type=int, default=64, help="h = w of the token grid (N = grid²)")
    ap.add_argument("--channels", type=int, default=1280)
    ap.add_argument("--tokens", type=int, default=256, help="target T")
    ap.add_argument(
        "--reps", type=int, default=2, help="timed repetitions of each; the best is kept (the first warms up)"
    )
    args = ap.parse_args()
    b, g, c, t = args.batch, args.grid, args.channels, args.tokens
    x = torch.randn(b, g * g, c, generator=torch.Generator().manual_seed(0))

    def cosine_matmul():
        xn = F.normalize(x, dim=-1)
        return xn @ xn.transpose(1, 2)

    result = {}

    def merge():
        result["merge"] = merge_tokens(x, (g, g), t)

    t_merge, t_core = [], []
    for _ in range(args.reps):  # interleaved, so both see the same machine load
        t_merge.append(_timed(merge))
        t_core.append(_timed(cosine_matmul))
    best_merge, best_core = min(t_merge), min(t_core)
    res = result["merge"]
    assert res.tokens.shape == (b, t, c)
    ratio = best_merge / best_core
    rounds = " → ".join(str(n) for n in (g * g, *res.counts))
    print(
        f"strided ToMe {b} × {g}x{g} × {c} → {t} tokens (rounds {rounds}): {best_merge:.2f} s; "
        f"one [B, N, C] cosine-similarity matmul (N×N per image): {best_core:.2f} s; "
        f"merge ÷ matmul = {ratio:.3f} ({torch.get_num_threads()} threads)"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "compress.json").write_text(
        json.dumps(
            {
                "batch": b,
                "grid": g,
                "channels": c,
                "tokens": t,
                "rounds": list(res.counts),
                "merge_s": best_merge,
                "cosine_matmul_s": best_core,
                "ratio": ratio,
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
