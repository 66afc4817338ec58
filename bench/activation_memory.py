"""Peak memory of one student forward + backward with and without activation checkpointing.

Each mode runs in its own subprocess, so the process's peak resident set (``ru_maxrss``) is that
mode's alone; ``activations_bytes`` is the peak minus the resident set once the model, its
gradients' storage and the input exist (what the forward's saved tensors and the backward cost).
On a GPU the same figure is ``torch.cuda.max_memory_allocated``.

    .venv/bin/python bench/activation_memory.py --size l --resolution 1024 --batch 2 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(size: str, resolution: int, batch: int, checkpoint: bool) -> dict:
    """One forward + backward of a random-init student ``size`` on ``[batch, 3, r, r]``."""
    import torch

    from radio.distill.student import AdaptorSpec, Student

    torch.manual_seed(0)
    dim = {"l": 1024, "h": 1280, "g": 1536, "b": 768, "so400m": 1152, "tiny": 64}[size]
    student = Student(size, [AdaptorSpec("t", dim, dim)], adaptor_hidden=dim).train()
    student.set_grad_checkpointing(checkpoint)
    for p in student.parameters():  # gradients allocated up front: the baseline holds them
        p.grad = torch.zeros_like(p)
    x = torch.rand(batch, 3, resolution, resolution)
    base = _rss_bytes()
    t0 = time.perf_counter()
    out = student(x)
    loss = out.adaptors["t"].features.float().square().mean() + out.adaptors["t"].summary.float().square().mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _rss_bytes()
    return {
        "checkpoint_activations": checkpoint,
        "peak_bytes": peak,
        "baseline_bytes": base,
        "activations_bytes": peak - base,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="l", help="student size (l: ViT-L/16)")
    ap.add_argument("--resolution", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=2, help="images per forward")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)  # a subprocess's single mode
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.size, args.resolution, args.batch, args.one == "on")))
        return
    runs = {}
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--size", args.size, "--resolution", str(args.resolution)]
        cmd += ["--batch", str(args.batch), "--one", mode]
        runs[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    result = {
        "size": args.size,
        "resolution": args.resolution,
        "batch": args.batch,
        "without": runs["off"],
        "with": runs["on"],
        "activations_ratio": runs["on"]["activations_bytes"] / max(1, runs["off"]["activations_bytes"]),
    }
    if args.json:
        print(json.dumps(result))
    else:
        gib = 2**30
        for name in ("without", "with"):
            r = result[name]
            print(
                f"{name:>7} checkpointing: peak {r['peak_bytes'] / gib:.2f} GiB, activations "
                f"{r['activations_bytes'] / gib:.2f} GiB, {r['seconds']} s"
            )


if __name__ == "__main__":
    main()
