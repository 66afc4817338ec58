"""Node feed: what a node of GPUs asks of phase 2's loader, against what this machine's CPU does.

Measured here, per process (one core):
  - the student-pixel path, images/s at each partition resolution, in four modes, on the same
    DataComp-sized JPEGs (longest side 512, q90, ~80 KB): ``decode`` (today's path: full decode,
    crop, bicubic resize), ``draft`` (PIL's DCT downscaling before the resize), ``jpeg`` (a JPEG
    pre-encoded at the partition resolution, q95: decode only) and ``raw`` (uint8 at the
    partition resolution: a copy);
  - target reads through the trainer's reader (`TargetReader`, rows mode, crc32c checked) of a
    fp16 key and its int8 compact copy; their rows/s give a per-row cost ``a + bytes / bw``
    that prices every key of every pipeline;
  - the trainer step's own CPU bookkeeping: the loop's learning rate, crop boxes, the sampler's
    rows and flips, the log record (the trainer's own functions, at each stage's batch sizes).
Computed, for each shipped pipeline (pipelines.yaml, `tiny` left out) and stage:
  - images/s per node from the student's training FLOPs (forward + backward:
    :func:`radio.distill.flops.student_flops`, the count the GPU check's MFU divides by)
    at ``--gpu-tflops`` sustained per GPU and ``--gpus``;
  - GB/s of target reads per codec: raw fp16, int8 (half), int8 at 1/8 of the raw bytes (rank
    C/4, `radio store compact --rank`);
  - the CPU cores the loader needs (pixels in each mode + target reads in each codec + the
    step's bookkeeping), and the cheapest pixel mode and codec that fit ``--cores`` and
    ``--disk-gbps``.
Prints a table; ``--json``: one JSON object on the last line (also bench/results/node_feed.json).

    .venv/bin/python bench/node_feed.py [--gpu-tflops 400] [--gpus 8] [--cores 112] [--disk-gbps 25] [--json]
    .venv/bin/python bench/node_feed.py --tiny --json   # seconds: few images, few rows, 256 px only
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("decode", "draft", "jpeg", "raw")
# bytes of a codec as a fraction of raw fp16 (features and summary alike)
CODECS = {"fp16": 1.0, "int8": 0.5, "int8_r8": 0.125}
CODEC_NAMES = {"fp16": "raw fp16", "int8": "int8", "int8_r8": "int8 rank 1/8"}


# ---- the plan: FLOPs -> images/s -> GB/s -> cores (pure functions) ------------------------------


@dataclass(frozen=True)
class Part:
    """One partition of a stage: resolution, global batch, fp16 target bytes per sample."""

    resolution: int
    batch: float  # (a stochastic partition's size: its mean share of a step)
    fp16_bytes: int
    keys: tuple[tuple[str, int], ...] = ()  # (key, fp16 bytes per sample)


def stage_images_per_s(parts: Sequence[Part], flops_of: Callable[[int], float], node_flops: float) -> list[float]:
    """Images/s of each partition on a node of ``node_flops`` sustained FLOP/s: a step trains every
    partition's batch, so steps/s = node FLOP/s ÷ Σ batch·FLOPs(resolution)."""
    step = sum(p.batch * flops_of(p.resolution) for p in parts)
    return [node_flops / step * p.batch for p in parts]


def target_gb_per_s(parts: Sequence[Part], images: Sequence[float]) -> dict[str, float]:
    """GB/s of target reads per codec."""
    raw = sum(p.fp16_bytes * n for p, n in zip(parts, images))
    return {c: raw * f / 1e9 for c, f in CODECS.items()}


def row_cost(rows_per_s_a: float, bytes_a: int, rows_per_s_b: float, bytes_b: int) -> tuple[float, float]:
    """``(a, bw)`` of ``1 / rows_per_s = a + bytes / bw`` through two measured row sizes (``a`` ≥ 0:
    noise can make the line's intercept negative)."""
    ta, tb = 1 / rows_per_s_a, 1 / rows_per_s_b
    if bytes_a == bytes_b or (ta - tb) / (bytes_a - bytes_b) <= 0:
        return 0.0, max(bytes_a * rows_per_s_a, bytes_b * rows_per_s_b)
    per_byte = (ta - tb) / (bytes_a - bytes_b)
    return max(0.0, ta - per_byte * bytes_a), 1 / per_byte


def loader_cores(
    parts: Sequence[Part],
    images: Sequence[float],
    pixel_rate: Callable[[int], float],
    codec: str,
    cost: tuple[float, float],
    step_s: float,
    steps_per_s: float,
    gpus: int,
) -> float:
    """CPU cores the loader needs: pixels (``images / pixel_rate(resolution)``), target reads (each
    key a row: ``a + bytes·codec / bw``) and each GPU's process doing the step's bookkeeping."""
    a, bw = cost
    cores = gpus * step_s * steps_per_s
    for p, n in zip(parts, images):
        cores += n / pixel_rate(p.resolution)
        keys = p.keys or (("all", p.fp16_bytes),)
        cores += n * sum(a + b * CODECS[codec] / bw for _, b in keys)
    return cores


def cheapest(
    gb: dict[str, float], need: dict[str, dict[str, float]], cores: float, disk_gbps: float
) -> tuple[str, str]:
    """The first ``(pixel mode, codec)``, in order of what they cost to prepare (today's decode and
    raw fp16 first; stored raw pixels and rank-1/8 int8 last), whose reads fit ``disk_gbps`` and
    whose loader fits ``cores``; ``("none", "none")`` when nothing does."""
    for mode in MODES:
        for codec in CODECS:
            if gb[codec] <= disk_gbps and need[mode][codec] <= cores:
                return mode, codec
    return "none", "none"


# ---- measurements -----------------------------------------------------------------------------


def _box(width: int, height: int):
    """A fixed 80 %-area centre crop (the trainer's boxes come from the manifest)."""
    from radio.shards.crops import CropBox

    side = int(min(width, height) * 0.9)
    return CropBox((width - side) // 2, (height - side) // 2, side, side)


def decode_full(data: bytes, size: int) -> np.ndarray:
    """Today's path (``PartitionRows.image``): full decode, the recorded crop, bicubic resize."""
    from radio.shards.crops import crop_resize
    from radio.shards.images import decode_image

    pixels = decode_image(data).pixels
    assert pixels is not None
    return crop_resize(pixels, _box(pixels.shape[1], pixels.shape[0]), size)


def decode_draft(data: bytes, size: int) -> np.ndarray:
    """PIL's ``draft``: the JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT, as far as the crop
    stays at least ``size``; then the same crop (scaled) and resize."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    box = _box(w, h)
    img.draft("RGB", (max(1, w * size // box.w), max(1, h * size // box.h)))
    s = img.size[0] / w
    crop = img.convert("RGB").crop(
        (round(box.x * s), round(box.y * s), round((box.x + box.w) * s), round((box.y + box.h) * s))
    )
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def decode_jpeg(data: bytes) -> np.ndarray:
    """A JPEG already at the partition resolution: decode only."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def images_per_s(fn: Callable[[], object], n: int, seconds: float) -> float:
    """Best of a few passes of ``n`` images (at least ``seconds`` in all)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return n / best


def measure_pixels(resolutions: Sequence[int], count: int, seconds: float) -> dict:
    """Images/s per core of each mode at each resolution, on the same images in one run."""
    from radio.shards.sampledata import datacomp_jpegs

    jpegs = datacomp_jpegs(count)
    out: dict = {"source_kb": float(np.mean([len(j) for j in jpegs]) / 1e3), "modes": {}}
    for r in resolutions:
        pre = []
        for j in jpegs:
            buf = io.BytesIO()
            Image.fromarray(decode_full(j, r)).save(buf, "JPEG", quality=95)
            pre.append(buf.getvalue())
        raw = [decode_full(j, r).tobytes() for j in jpegs]
        rates = {
            "decode": images_per_s(lambda: [decode_full(j, r) for j in jpegs], count, seconds),
            "draft": images_per_s(lambda: [decode_draft(j, r) for j in jpegs], count, seconds),
            "jpeg": images_per_s(lambda: [decode_jpeg(p) for p in pre], count, seconds),
            # a stored uint8 view: the bytes become the [r, r, 3] array the batch stacks
            "raw": images_per_s(
                lambda: [np.frombuffer(b, np.uint8).reshape(r, r, 3).copy() for b in raw], count, seconds
            ),
        }
        out["modes"][str(r)] = {
            "images_per_s": rates,
            "ratio_to_decode": {m: rates[m] / rates["decode"] for m in MODES},
            "jpeg_kb": float(np.mean([len(p) for p in pre]) / 1e3),
            "raw_kb": r * r * 3 / 1e3,
        }
    return out


def measure_targets(rows: int, grid: int, dim: int, batch: int, repeat: int) -> dict:
    """Rows/s of the trainer's reader (rows mode) for a ``grid²×dim`` fp16 key with a summary, and
    its int8 compact copy, page-cache-hot; one store in a temporary folder."""
    from radio.distill.data import EpochOrder
    from radio.store import checksums
    from radio.store.layout import FeatureStore, Plan
    from radio.store.targets import TargetReader

    shard = 64
    rows = max(shard, rows // shard * shard)
    with tempfile.TemporaryDirectory(dir=".") as d:
        plan = Plan.build([(f"/nonexistent/{i:05d}.tar", 0, shard, None) for i in range(rows // shard)], shard)
        store = FeatureStore.create(Path(d) / "store.zarr", plan, {"bench": True})
        store.create_target("k", grid=(grid, grid), feature_dim=dim, summary_dim=dim, provenance={}, compressor="none")
        int8 = checksums.create_array(
            store.root["targets"]["k"].create_group("compact"),
            "features",
            shape=(rows, grid, grid, dim),
            dtype="int8",
            chunks=(1, grid, grid, dim),
            shards=(shard, grid, grid, dim),
            compressor="none",
            fill_value=0,
        )
        rng = np.random.default_rng(0)
        for start in range(0, rows, shard):
            feats = rng.standard_normal((shard, grid, grid, dim), dtype=np.float32).astype(np.float16)
            store.write_shard("k", start, feats, rng.standard_normal((shard, dim), dtype=np.float32).astype(np.float16))
            int8[start : start + shard] = np.clip(np.rint(feats * 32), -127, 127).astype(np.int8)
        order = EpochOrder(np.arange(rows), batch, 0, 0, "rows", shard)
        steps = max(1, rows // batch)
        out = {}
        for name, reader, nbytes in (
            ("fp16", TargetReader(store.path, [("k", True)]), (grid * grid + 1) * dim * 2),
            ("int8", TargetReader(store.path, [("k", False)], compact=frozenset({"k"})), grid * grid * dim),
        ):
            t = min(_timed(lambda: [reader.read(order.batch(s)) for s in range(steps)]) for _ in range(repeat + 1))
            out[name] = {
                "rows_per_s": steps * batch / t,
                "row_bytes": nbytes,
                "gb_per_s": steps * batch * nbytes / t / 1e9,
            }
    return out


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_step_overhead(batches: Sequence[int], world: int, steps: int) -> float:
    """Seconds of CPU a trainer step spends outside data, forward and backward: the learning
    rate, each partition's crop boxes (the global batch: every rank draws all, keeps its own),
    the sampler's rows and flips for this rank, and the log record, with the trainer's own
    functions."""
    import torch

    from radio.distill.cpe import draw_crops
    from radio.distill.data import StepBatches
    from radio.distill.schedule import lr_at
    from radio.distill.trainer import _crop_generator

    samplers = [
        iter(StepBatches(np.arange(1_000_000), b, 0, p, 0, steps + 1, 0, world, True)) for p, b in enumerate(batches)
    ]
    for s in samplers:
        next(s)  # the first epoch's permutation, computed once per run
    t = time.perf_counter()
    for step in range(steps):
        lr = lr_at(step, 300_000, 1e-3, 5000)
        items = [next(s) for s in samplers]
        for p, b in enumerate(batches):
            c = draw_crops(b, _crop_generator(0, 1, p, step), 0.1)
            _ = c[: b // world]  # this rank's boxes
        values = torch.stack([torch.tensor(1.0)] * 12).cpu()
        json.dumps({"step": step, "lr": lr, **{str(i): float(v) for i, v in enumerate(values)}, "n": len(items)})
    return (time.perf_counter() - t) / steps


# ---- pipelines ---------------------------------------------------------------------------------


def pipeline_stages(config_path: str) -> dict[str, dict]:
    """For each shipped pipeline but ``tiny``: its student's spec and, per stage, its partitions
    with their target keys' fp16 bytes per sample (grids and dims from the teachers' specs)."""
    from radio.config.load import load_pipeline, read_pipelines
    from radio.distill.student import student_spec
    from radio.featurize.job import provenance, select

    out = {}
    for name in read_pipelines(config_path).pipelines:
        if name == "tiny":
            continue
        config = load_pipeline(config_path, name)
        key_bytes = {}
        for teacher, (_, _, jobs) in select(config).teachers.items():
            for job in jobs:
                p = provenance(config, teacher, job)
                key_bytes[job.key] = 2 * (p.grid[0] * p.grid[1] * p.feature_dim + (p.summary_dim or 0))
        spec = student_spec(config.student.size)
        stages, step_batches, labels = [], [], []
        for stage in config.stages:
            # A stochastic partition (resolutions drawn per step, uniformly) is planned as its mean
            # step: each size's batch, weighted by its share of the draws.
            parts = [
                Part(
                    s,
                    p.batch_at(s) / len(p.sizes),
                    sum(key_bytes[k] for k in p.targets),
                    tuple((k, key_bytes[k]) for k in p.targets),
                )
                for p in stage.partitions
                for s in p.sizes
            ]
            stages.append(parts)
            # the step's bookkeeping: each partition's mean batch over its sizes (fixed: its batch)
            step_batches.append([round(sum(map(p.batch_at, p.sizes)) / len(p.sizes)) for p in stage.partitions])
            # a drawn set reads {lo…hi}, a fixed partition its size
            labels.append(
                " + ".join(
                    str(p.resolution) if p.resolutions is None else f"{{{min(p.sizes)}…{max(p.sizes)}}}"
                    for p in stage.partitions
                )
            )
        out[name] = {
            "spec": spec,
            "prefix": config.student.register_multiple,
            "stages": stages,
            "step_batches": step_batches,
            "labels": labels,
        }
    return out


def plan(
    pipelines: dict[str, dict],
    gpu_tflops: float,
    gpus: int,
    pixel_rates: dict[str, dict[int, float]],
    cost: tuple[float, float],
    step_s: Callable[[Sequence[int]], float],
    cores: int,
    disk_gbps: float,
) -> list[dict]:
    """One row per (pipeline, stage): images/s per node, GB/s per codec, cores per pixel mode and
    codec, and the cheapest pixel mode and codec that fit ``cores`` and ``disk_gbps``."""
    from radio.distill.flops import student_flops

    node = gpu_tflops * 1e12 * gpus
    rows = []
    for name, p in pipelines.items():
        spec = p["spec"]

        def flops(r: int, spec=spec, prefix=p["prefix"]) -> float:
            return student_flops(spec, r, prefix_tokens=prefix)

        for i, parts in enumerate(p["stages"], 1):
            images = stage_images_per_s(parts, flops, node)
            steps_per_s = images[0] / parts[0].batch
            gb = target_gb_per_s(parts, images)
            overhead = step_s(p["step_batches"][i - 1])  # one batch per partition, as a step has
            need = {
                mode: {
                    c: loader_cores(
                        parts,
                        images,
                        lambda r, m=mode: _rate_at(pixel_rates[m], r),
                        c,
                        cost,
                        overhead,
                        steps_per_s,
                        gpus,
                    )
                    for c in CODECS
                }
                for mode in MODES
            }
            mode, codec = cheapest(gb, need, cores, disk_gbps)
            rows.append(
                {
                    "pipeline": name,
                    "student": spec.name,
                    "stage": i,
                    "resolutions": [q.resolution for q in parts],
                    "label": p["labels"][i - 1] if "labels" in p else " + ".join(str(q.resolution) for q in parts),
                    "train_tflops_per_image": [flops(q.resolution) / 1e12 for q in parts],
                    "images_per_s": sum(images),
                    "target_gb_per_s": gb,
                    "cores": need,
                    "codec": codec,
                    "pixels": mode,
                }
            )
    return rows


def _rate_at(rates: dict[int, float], r: int) -> float:
    """The measured rate at ``r``, or at the nearest measured resolution, scaled by pixel count
    (the decode of the source is the same; the resize and copy grow with r²) when none was."""
    if r in rates:
        return rates[r]
    near = min(rates, key=lambda m: abs(m - r))
    return rates[near] * min(1.0, (near / r) ** 2) if r > near else rates[near]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="pipelines.yaml", help="the pipelines whose stages are planned")
    ap.add_argument("--gpu-tflops", type=float, default=400.0, help="sustained training TFLOP/s per GPU")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    ap.add_argument("--cores", type=int, default=112, help="CPU cores per node for the loader (DGX H100: 112)")
    ap.add_argument("--disk-gbps", type=float, default=25.0, help="GB/s the node's store can serve")
    ap.add_argument("--images", type=int, default=48, help="sample images per pixel measurement")
    ap.add_argument("--rows", type=int, default=512, help="rows of the measured target key (multiple of 64)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per pixel measurement (best pass)")
    ap.add_argument("--tiny", action="store_true", help="a few seconds: 8 images, 64 rows, 256 px only")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args()
    if args.tiny:
        args.images, args.rows, args.seconds = 8, 64, 0.05

    from radio.config.load import ConfigError

    try:
        pipelines = pipeline_stages(args.config)
    except ConfigError as e:  # a user's mistake: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    shipped = sorted({q.resolution for p in pipelines.values() for parts in p["stages"] for q in parts})
    resolutions = [256] if args.tiny else shipped
    pixels = measure_pixels(resolutions, args.images, args.seconds)
    targets = measure_targets(args.rows, 16, 1280, 64 if not args.tiny else 16, 1 if args.tiny else 3)
    cost = row_cost(
        targets["fp16"]["rows_per_s"],
        targets["fp16"]["row_bytes"],
        targets["int8"]["rows_per_s"],
        targets["int8"]["row_bytes"],
    )
    overheads: dict[tuple[int, ...], float] = {}

    def step_s(batches: Sequence[int]) -> float:
        key = tuple(batches)
        if key not in overheads:
            overheads[key] = measure_step_overhead(batches, args.gpus, 3 if args.tiny else 20)
        return overheads[key]

    rates = {m: {int(r): v["images_per_s"][m] for r, v in pixels["modes"].items()} for m in MODES}
    rows = plan(pipelines, args.gpu_tflops, args.gpus, rates, cost, step_s, args.cores, args.disk_gbps)

    print(f"this machine, one process: pixels from {pixels['source_kb']:.0f} KB JPEGs (images/s per core)")
    for r, v in pixels["modes"].items():
        ips, ratio = v["images_per_s"], v["ratio_to_decode"]
        print(
            f"  {r:>4} px: "
            + ", ".join(f"{m} {ips[m]:,.0f} ({ratio[m]:.1f}x)" for m in MODES)
            + f"; jpeg {v['jpeg_kb']:.0f} KB, raw {v['raw_kb']:.0f} KB"
        )
    for c, v in targets.items():
        print(
            f"  targets {c}: {v['rows_per_s']:,.0f} rows/s of {v['row_bytes'] / 1e3:.0f} KB ({v['gb_per_s']:.2f} GB/s)"
        )
    print(f"  per row read: {cost[0] * 1e6:.0f} us + bytes at {cost[1] / 1e9:.2f} GB/s")
    for k, v in overheads.items():
        print(f"  step bookkeeping at batches {list(k)}: {v * 1e3:.2f} ms")
    print(
        f"\nnode: {args.gpus} GPUs x {args.gpu_tflops:.0f} TFLOP/s, {args.cores} cores, {args.disk_gbps:g} GB/s of store reads"
    )
    print(
        "| pipeline | stage (px) | images/s | targets GB/s: fp16 / int8 / int8 r1/8 | cores, decode + fp16 | "
        "cores, jpeg + int8 | cores, raw + int8 r1/8 | fits |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        gb, need = r["target_gb_per_s"], r["cores"]
        fits = f"{r['pixels']} + {CODEC_NAMES.get(r['codec'], 'none')}" if r["pixels"] != "none" else "none"
        print(
            f"| {r['pipeline']} | {r['stage']} ({r['label']}) | {r['images_per_s']:,.0f} | "
            f"{gb['fp16']:.1f} / {gb['int8']:.1f} / {gb['int8_r8']:.1f} | {need['decode']['fp16']:.0f} | "
            f"{need['jpeg']['int8']:.0f} | {need['raw']['int8_r8']:.0f} | {fits} |"
        )
    out = {
        "gpu_tflops": args.gpu_tflops,
        "gpus": args.gpus,
        "cores": args.cores,
        "disk_gbps": args.disk_gbps,
        "pixels": pixels,
        "targets": targets,
        "row_cost_s": cost[0],
        "row_bw_gb_per_s": cost[1] / 1e9,
        "step_overhead_s": {",".join(map(str, k)): v for k, v in overheads.items()},
        "plan": rows,
    }
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "node_feed.json").write_text(json.dumps(out, indent=2))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
