"""Distill benchmarks, measured in one run on a freshly featurized tiny store.

1. Loader: samples/s one loader worker delivers (tar random access, decode, recorded crop, resize,
   every target key's features and summary from Zarr) ÷ images/s of decode + crop + resize alone
   on the same rows. The gap is what reading targets costs.
2. Trainer (CPU, tiny student, stage 1 of the `tiny` pipeline): images/s and the fraction of step
   time spent waiting for data, with 0, 1 and 2 DataLoader workers.
3. MESA: step time with ``stages[].mesa`` on ÷ off (0 workers, the same steps; runs alternate,
   the median step of each kept), also without the step's wait for data (the compute MESA adds
   to), and the bytes of the EMA copy (float32, what each checkpoint and the final weights gain).
   ``--mesa-only`` runs this case alone.
4. Shift-equivariant loss: step time with ``stages[].shift`` on ÷ off on one store featurized with
   a margin of 1 teacher patch (``tiny``'s CLIP and a SAM mosaic of 1, as the shift tests; off
   trains on the centre windows of the same targets), 0 workers, alternating runs, medians; the
   loader renders the extended view and cuts both windows. ``--shift-only`` runs this case alone.

``--json``: one JSON object with every case's figures on the last line.

    .venv/bin/python bench/distill_bench.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from radio.config import load_pipeline
from radio.config.schema import MesaConfig, ShiftConfig
from radio.distill.checkpoint import load_weights
from radio.distill.checks import stage_targets
from radio.distill.data import PartitionRows
from radio.distill.final_weights import EMA_PREFIX
from radio.distill.run import RunFolder, read_metrics
from radio.distill.trainer import train_stage
from radio.shards.crops import CropBox, crop_resize
from radio.shards.sampledata import write_sample_data
from radio.shards.tar import read_image
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store
from radio.store.split import split_rows

REPO = Path(__file__).resolve().parents[1]


def mesa_cost(config, tmp: Path, steps: int) -> dict:
    """Step time with MESA on ÷ off on stage 1 of ``config`` (runs alternate, medians), and the
    bytes of the EMA copy in the final weights."""
    step_s: dict[str, list[float]] = {"off": [], "on": []}
    compute_s: dict[str, list[float]] = {"off": [], "on": []}  # the step without its wait for data
    ema_bytes = 0
    for repeat in range(2):
        for arm in ("off", "on"):
            out = tmp / f"mesa_{arm}{repeat}"
            stage1 = config.stages[0].model_copy(update={"mesa": MesaConfig(enabled=arm == "on")})
            cfg = config.model_copy(update={"out": str(out), "stages": (stage1, *config.stages[1:])})
            train_stage(cfg, 1, steps=steps)
            images = stage1.partitions[0].batch_size
            recs = read_metrics(RunFolder(out).stage(1).metrics)[5:]  # skip start-up steps
            step_s[arm] += [images / r["images_per_s"] for r in recs]
            compute_s[arm] += [images / r["images_per_s"] * (1 - r["data_wait"]) for r in recs]
            if arm == "on":
                weights = load_weights(RunFolder(out).stage(1).weights)
                ema_bytes = sum(v.numel() * v.element_size() for k, v in weights.items() if k.startswith(EMA_PREFIX))
    off, on = float(np.median(step_s["off"])), float(np.median(step_s["on"]))
    c_off, c_on = float(np.median(compute_s["off"])), float(np.median(compute_s["on"]))
    return {
        "step_s_off": off,
        "step_s_on": on,
        "ratio": on / off,
        "compute_s_off": c_off,
        "compute_s_on": c_on,
        "compute_ratio": c_on / c_off,
        "ema_bytes": ema_bytes,
    }


def shift_store(tmp: Path, images: int):
    """A store featurized with ``featurize.shift_margin`` 1 for the shift case: its config."""
    from conftest import featurize_in_process, margin_pipeline  # the shift tests' store

    write_sample_data(tmp / "shift_shards", images=images, shard_size=32, seed=1)
    config = margin_pipeline(REPO, str(tmp / "shift_shards" / "*.tar"), str(tmp / "shift.zarr"), 8)
    featurize_in_process(config)
    fit_store(FeatureStore(config.store.path))
    return config


def shift_cost(config, tmp: Path, steps: int) -> dict:
    """Step time with the shift loss on ÷ off (the same margin store; runs alternate, medians)."""
    step_s: dict[str, list[float]] = {"off": [], "on": []}
    for repeat in range(2):
        for arm in ("off", "on"):
            out = tmp / f"shift_{arm}{repeat}"
            stage = config.stages[0].model_copy(
                update={"shift": ShiftConfig(enabled=arm == "on"), "steps": steps, "checkpoint_every": steps}
            )
            train_stage(config.model_copy(update={"out": str(out), "stages": (stage,)}), 1)
            images = stage.partitions[0].batch_size
            recs = read_metrics(RunFolder(out).stage(1).metrics)[5:]  # skip start-up steps
            step_s[arm] += [images / r["images_per_s"] for r in recs]
    off, on = float(np.median(step_s["off"])), float(np.median(step_s["on"]))
    return {"step_s_off": off, "step_s_on": on, "ratio": on / off}


def print_shift(sh: dict) -> None:
    print(
        f"shift (tiny student, 192 px, clip@168 + sam@192 with a margin of 1, 0 workers): step "
        f"{sh['step_s_on'] * 1e3:.1f} ms on ÷ {sh['step_s_off'] * 1e3:.1f} ms off = {sh['ratio']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--mesa-only", action="store_true", help="only case 3 (MESA's cost)")
    ap.add_argument("--shift-only", action="store_true", help="only case 4 (the shift loss's cost)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import featurize_in_process  # the same in-process featurize the tests use

    results: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_sample_data(tmp / "shards", images=args.images, shard_size=32, seed=0)
        config = load_pipeline(
            REPO / "pipelines.yaml",
            "tiny",
            data=str(tmp / "shards" / "*.tar"),
            store=str(tmp / "store.zarr"),
            out=str(tmp / "run"),
        )
        if args.shift_only:
            results["shift"] = shift_cost(shift_store(tmp, args.images), tmp, args.steps)
            print_shift(results["shift"])
            if args.json:
                print(json.dumps(results))
            return
        featurize_in_process(config)
        store = FeatureStore(config.store.path)
        fit_store(store)
        if args.mesa_only:
            results["mesa"] = mesa_cost(config, tmp, args.steps)
            print_mesa(results["mesa"])
            if args.json:
                print(json.dumps(results))
            return

        # ---- 1. loader vs decode + resize ---------------------------------------------------
        ((resolution, keys),) = stage_targets(store, config, 1)
        rows = split_rows(store, [t.key for t in keys], 0).train
        ds = PartitionRows(str(store.path), resolution, keys)
        ds[(int(rows[0]), False)]  # open the store and manifest outside the timing
        m = ds.manifest()
        c = m.columns

        def decode_resize():
            for r in rows:
                image = read_image(m.tar_paths[int(m.tar_of(np.array([r]))[0])], int(c["offset"][r]), int(c["size"][r]))
                crop_resize(
                    image,
                    CropBox(int(c["crop_x"][r]), int(c["crop_y"][r]), int(c["crop_w"][r]), int(c["crop_h"][r])),
                    resolution,
                )

        def loader():  # worker batch slices of 8 rows, as the trainer's DataLoader asks
            for i in range(0, len(rows), 8):
                ds.__getitems__([(int(r), False) for r in rows[i : i + 8]])

        times = {"decode_resize": [], "loader": []}
        for _ in range(3):  # alternate, keep the best of each
            for name, fn in (("decode_resize", decode_resize), ("loader", loader)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        base = len(rows) / min(times["decode_resize"])
        load = len(rows) / min(times["loader"])
        results["loader"] = {
            "rows": len(rows),
            "keys": len(keys),
            "decode_resize_per_s": base,
            "loader_per_s": load,
            "ratio": load / base,
        }

        # ---- 2. trainer images/s and data wait ------------------------------------------------
        results["trainer"] = {}
        for workers in (0, 1, 2):
            out = tmp / f"run{workers}"
            cfg = config.model_copy(update={"out": str(out)})
            train_stage(cfg, 1, steps=args.steps, workers=workers)
            recs = read_metrics(RunFolder(out).stage(1).metrics)[5:]  # skip start-up steps
            results["trainer"][workers] = {
                "images_per_s": float(np.mean([r["images_per_s"] for r in recs])),
                "data_wait": float(np.mean([r["data_wait"] for r in recs])),
            }

        results["mesa"] = mesa_cost(config, tmp, args.steps)
        results["shift"] = shift_cost(shift_store(tmp, args.images), tmp, args.steps)

    lo = results["loader"]
    print(
        f"loader ({lo['rows']} rows at {resolution} px, {lo['keys']} target keys): {lo['loader_per_s']:.1f} samples/s "
        f"per worker ÷ decode + crop + resize alone {lo['decode_resize_per_s']:.1f} images/s = {lo['ratio']:.3f}"
    )
    for workers, r in results["trainer"].items():
        print(
            f"trainer (tiny student, stage 1, batch {config.stages[0].partitions[0].batch_size}, {workers} loader "
            f"workers): {r['images_per_s']:.1f} images/s, data wait {r['data_wait']:.1%} of step time"
        )
    print_mesa(results["mesa"])
    print_shift(results["shift"])
    if args.json:
        print(json.dumps(results))
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "distill.json").write_text(json.dumps(results, indent=2))


def print_mesa(me: dict) -> None:
    print(
        f"MESA (tiny student, stage 1, 0 workers): step {me['step_s_on'] * 1e3:.1f} ms on ÷ "
        f"{me['step_s_off'] * 1e3:.1f} ms off = {me['ratio']:.2f}; without the data wait "
        f"{me['compute_s_on'] * 1e3:.1f} ÷ {me['compute_s_off'] * 1e3:.1f} ms = {me['compute_ratio']:.2f}; "
        f"EMA copy {me['ema_bytes'] / 1e6:.2f} MB (float32)"
    )


if __name__ == "__main__":
    main()
