"""`radio sample-data`: DataComp-layout shards made from scikit-image's bundled photos, a labeled
ImageFolder set (``--labeled``), or a dense-probe set (``--task seg|depth|stereo``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail


class Task(str, Enum):
    seg = "seg"
    depth = "depth"
    stereo = "stereo"


class SegLayout(str, Enum):
    ade = "ade"
    voc = "voc"


def _dense(task: Task, out: Path, images: int, seed: int, layout: SegLayout) -> None:
    from radio.shards.densedata import write_depth_data, write_seg_data, write_stereo_data

    try:
        if task == Task.seg:
            s = write_seg_data(out, train=images, val=max(1, images // 4), seed=seed, layout=layout.value)
        elif task == Task.depth:
            s = write_depth_data(out, files=images, seed=seed)
        else:
            s = write_stereo_data(out, seed=seed)
    except ValueError as e:
        raise fail(str(e)) from None
    what = f"{s.train} pairs" if task == Task.stereo else f"{s.train} train and {s.val} val samples"
    print(f"wrote a {task.value} set to {s.out}: {what} (pass --data {s.out} to `radio eval`)")


def sample_data(
    out: Annotated[Path, typer.Option("--out", help="folder to write NNNNNNNN.tar/.parquet/_stats.json into")] = Path(
        "data/sample"
    ),
    images: Annotated[int, typer.Option("--images", help="good photos to write")] = 64,
    shard_size: Annotated[int, typer.Option("--shard-size", help="attempted samples per shard")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="random seed: same seed, same bytes")] = 0,
    corrupt: Annotated[
        int, typer.Option("--corrupt", help="add K bad samples (corrupt, truncated, missing, empty, tiny, bomb)")
    ] = 0,
    exotic: Annotated[
        int, typer.Option("--exotic", help="add M valid images in unusual encodings (CMYK, 16-bit, RGBA, ...)")
    ] = 0,
    labeled: Annotated[
        bool,
        typer.Option(
            "--labeled",
            help="write a labeled ImageFolder set instead (OUT/{train,val}/CLASS/*.jpg, "
            "class = source photo) for `radio eval knn|zero-shot`; --images = train images per class, "
            "val gets half as many",
        ),
    ] = False,
    task: Annotated[
        Task | None,
        typer.Option(
            "--task",
            help="write a dense-probe set instead: seg (texture mosaics, ADE20k or VOC layout; --images = train "
            "images, val gets a quarter), depth (NYU GeoNet .mat files of Middlebury motorcycle; --images = files), "
            "stereo (Middlebury layout and a matches.csv pair)",
        ),
    ] = None,
    layout: Annotated[SegLayout, typer.Option("--layout", help="layout of --task seg: ade or voc")] = SegLayout.ade,
) -> None:
    """Write sample data in DataComp/img2dataset layout (tars, parquet, stats) from real photos."""
    from radio.shards.sampledata import write_labeled_data, write_sample_data

    if task is not None:
        _dense(task, out, images, seed, layout)
        return
    if labeled:
        try:
            s = write_labeled_data(out, train_per_class=images, val_per_class=max(1, images // 2), seed=seed)
        except ValueError as e:
            raise fail(str(e)) from None
        print(f"wrote a labeled set to {s.out}: {s.classes} classes, {s.train} train and {s.val} val images")
        return
    try:
        s = write_sample_data(out, images=images, shard_size=shard_size, seed=seed, corrupt=corrupt, exotic=exotic)
    except ValueError as e:
        raise fail(str(e)) from None
    print(
        f"wrote {s.shards} shards to {s.out}: {s.attempted} attempted samples, {s.in_tars} in tars "
        f"({s.exotic} exotic, {s.corrupt} corrupt), {s.failed_to_download} failed downloads in parquet only"
    )
