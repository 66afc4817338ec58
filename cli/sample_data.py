"""`radio sample-data`: DataComp-layout shards made from scikit-image's bundled photos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import fail


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
) -> None:
    """Write sample data in DataComp/img2dataset layout (tars, parquet, stats) from real photos."""
    from radio.shards.sampledata import write_labeled_data, write_sample_data

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
