"""Student pixels benchmark: phase 2's student images per core, tar decode vs stored views.

On the same rows of one store, in one run and one process (one torch thread), it times what
`PartitionRows.images` does for a batch at ``--resolution`` (default 256):
  - ``tar``: today's path: read the row's JPEG from its tar, full decode, crop, resize;
  - ``jpeg``: the stored view (``featurize.student_pixels: jpeg``, q95): read, batched decode
    (`radio.distill.pixels.decode_views`, the CPU branch of the call the GPU runs);
  - ``raw``: the stored uint8 view: read only.
Images/s are per CPU-second of the process (``time.process_time``: every thread counted, so a
shared machine's other jobs do not count, and a reader thread is not a free core), best of
``--repeat`` alternating rounds; wall-clock images/s are reported beside them.

The images are DataComp-like (:func:`radio.shards.sampledata.datacomp_jpegs`, as node_feed's):
bundled photos cut and resized to 512 px on the long side, JPEG q90. The store is made by the project's own
featurize (one tiny teacher key, in process) and `radio store add-pixels`'s function.

    .venv/bin/python bench/pixels_bench.py [--images 256] [--resolution 256] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from radio.config import load_pipeline
from radio.distill.data import PartitionRows
from radio.featurize.graph import run_local
from radio.featurize.job import _settings, prepare, select
from radio.featurize.pixels import add_pixels, plan_pixels
from radio.shards.sampledata import datacomp_jpegs
from radio.store.layout import FeatureStore

REPO = Path(__file__).resolve().parents[1]
PER_TAR = 64


def write_tars(out: Path, images: int) -> float:
    """``images`` DataComp-sized JPEGs (:func:`~radio.shards.sampledata.datacomp_jpegs`) in
    DataComp-layout tars of 64; returns their mean size in bytes."""
    jpegs = datacomp_jpegs(images)
    out.mkdir(parents=True)
    for t in range(-(-images // PER_TAR)):
        with tarfile.open(out / f"{t:08d}.tar", "w") as tar:
            for i in range(t * PER_TAR, min(images, (t + 1) * PER_TAR)):
                key = f"{t:05d}{i % PER_TAR:04d}"
                for suffix, payload in (("jpg", jpegs[i]), ("txt", b"a photo"), ("json", b"{}")):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
    return float(np.mean([len(j) for j in jpegs]))


def build(root: Path, images: int, resolution: int) -> tuple[Path, Path, float]:
    """A store (jpeg views at ``resolution``) and its copy with raw views; the JPEGs' mean size."""
    mean_bytes = write_tars(root / "shards", images)
    config = load_pipeline(
        REPO / "pipelines.yaml",
        "tiny",
        data=str(root / "shards" / "*.tar"),
        store=str(root / "jpeg.zarr"),
        out=str(root / "run"),
    )
    store, items = prepare(config, select(config, ["clip@112"]))
    for result in run_local(store, items, _settings(config), config.featurize.batch_size):
        assert result.error is None, result.error
    plan_pixels(store, "jpeg", 95, [resolution])
    add_pixels(store)
    shutil.copytree(root / "jpeg.zarr", root / "raw.zarr")
    raw = FeatureStore(root / "raw.zarr")
    plan_pixels(raw, "raw", 95, [resolution], overwrite=True)
    add_pixels(raw)
    return root / "jpeg.zarr", root / "raw.zarr", mean_bytes


def time_path(dataset: PartitionRows, batches: list[np.ndarray]) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) of ``dataset.images`` over ``batches``."""
    n = sum(len(b) for b in batches)
    cpu, wall = time.process_time(), time.perf_counter()
    for b in batches:
        dataset.images(b)
    return n / (time.process_time() - cpu), n / (time.perf_counter() - wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images in the store (tars of 64)")
    ap.add_argument("--resolution", type=int, default=256, help="the partition resolution of the views")
    ap.add_argument("--batch", type=int, default=64, help="rows per images() call (one loader batch)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds; the best of each is kept")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pixels_bench_") as tmp:
        root = Path(tmp)
        jpeg_store, raw_store, mean_bytes = build(root, args.images, args.resolution)
        m = FeatureStore(jpeg_store).manifest().to_pydict()
        rows = np.array([r for r, v in zip(m["row"], m["valid"]) if v], dtype=np.int64)
        rng = np.random.default_rng(0)
        batches = [b for b in np.array_split(rng.permutation(rows), max(1, len(rows) // args.batch))]
        r = args.resolution
        paths = {
            "tar": PartitionRows(str(jpeg_store), r, [], stored_pixels=False),
            "jpeg": PartitionRows(str(jpeg_store), r, []),
            "raw": PartitionRows(str(raw_store), r, []),
        }
        assert paths["jpeg"].pixels is not None and paths["raw"].pixels is not None
        for d in paths.values():  # open handles, page cache warm for every path alike
            d.images(batches[0])
        best = {k: (0.0, 0.0) for k in paths}
        for _ in range(args.repeat):
            for k, d in paths.items():
                cpu, wall = time_path(d, batches)
                best[k] = (max(best[k][0], cpu), max(best[k][1], wall))
        from radio.store.inspect import pixel_info

        fs = FeatureStore(jpeg_store)
        valid, tars = np.asarray(m["valid"], bool), np.asarray(m["tar_index"])
        stored = {p.mode: p.stored_bytes_per_sample for p in pixel_info(fs, valid, tars)}
        stored |= {p.mode: p.stored_bytes_per_sample for p in pixel_info(FeatureStore(raw_store), valid, tars)}
        out = {
            "images": int(len(rows)),
            "source_jpeg_bytes_mean": round(mean_bytes),
            "resolution": r,
            "images_per_cpu_s": {k: round(v[0], 1) for k, v in best.items()},
            "images_per_wall_s": {k: round(v[1], 1) for k, v in best.items()},
            "ratio_jpeg": round(best["jpeg"][0] / best["tar"][0], 2),
            "ratio_raw": round(best["raw"][0] / best["tar"][0], 2),
            "stored_bytes_per_sample": {k: round(v) for k, v in stored.items()},
        }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['images']} images (JPEG {out['source_jpeg_bytes_mean'] / 1000:.0f} KB mean, 512 px) at {r} px:")
    for k in paths:
        print(
            f"  {k:5s} {out['images_per_cpu_s'][k]:9.1f} images per CPU-s ({out['images_per_wall_s'][k]:.1f} per wall-s)"
        )
    print(f"  ratio jpeg {out['ratio_jpeg']} (>= 5), raw {out['ratio_raw']} (>= 50)")


if __name__ == "__main__":
    main()
