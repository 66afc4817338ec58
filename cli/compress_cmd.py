"""`radio compress`: merge an exported model's tokens to a VLM budget and measure what it costs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import fail, user_errors

BATCH = 8  # images per forward pass
MAX_IMAGE_COLUMNS = 6  # per-image columns in the table; beyond that only the mean and the worst


@user_errors
def compress(
    model: Annotated[Path, typer.Option("--model", help="export folder (from `radio export`) loadable by radio.load")],
    images: Annotated[list[Path], typer.Option("--images", help="image file or folder of images; repeat for more")],
    tokens: Annotated[int, typer.Option("--tokens", help="token budget T per image")] = 196,
    resolution: Annotated[int, typer.Option("--resolution", help="input size R (R×R, a multiple of 16)")] = 432,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for merged tokens, sizes, maps (safetensors)")
    ] = None,
    picture: Annotated[
        bool, typer.Option("--picture", help="also a PNG per image of its merged regions (needs --out)")
    ] = False,
    stride: Annotated[tuple[int, int], typer.Option("--stride", help="destination windows, rows cols")] = (2, 2),
    one_round: Annotated[
        bool,
        typer.Option("--one-round", help="pick the smallest k×k windows (k ≤ 4) that merge to --tokens in one round"),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of the random-destination baseline")] = 0,
) -> None:
    """Merge each image's tokens to --tokens with strided ToMe and print the reconstruction error of
    every method at that budget (ToMe strided, ToMe random destinations, average pooling, pixel
    unshuffle), as in the paper's Table A9."""
    if resolution < 16 or resolution % 16:
        raise fail(f"--resolution {resolution} is not a multiple of 16")
    if tokens < 1:
        raise fail(f"--tokens {tokens} must be at least 1")
    if picture and out is None:
        raise fail("--picture needs --out (the folder to write the PNGs into)")
    import numpy as np
    import torch

    import radio
    from radio.compress.images import CompressError, find_images, read_image

    try:
        paths = find_images(images)
        net = radio.load(model)
        patch = int(net.config["student"]["patch"])
        h = w = resolution // patch
        if tokens >= h * w:
            raise CompressError(
                f"--tokens {tokens} must be smaller than the {h * w} tokens of the {h}x{w} grid "
                f"at --resolution {resolution}"
            )
        pixels = [read_image(p, resolution) for p in paths]
    except CompressError as e:
        raise fail(str(e)) from None

    from radio.compress.compare import compare_methods

    names = _unique_stems(paths)
    per_batch = []
    for start in range(0, len(paths), BATCH):
        batch = np.stack(pixels[start : start + BATCH])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
        feats = net(x).features  # [B, h, w, D]
        b, fh, fw, d = feats.shape
        scores, merged = compare_methods(
            feats.reshape(b, fh * fw, d).float(), (fh, fw), tokens, stride="auto" if one_round else stride, seed=seed
        )
        per_batch.append(scores)
        if out is not None:
            _write(
                out,
                names[start : start + b],
                paths[start : start + b],
                merged,
                (fh, fw),
                tokens,
                merged.stride,
                resolution,
                str(model),
                pixels[start : start + b] if picture else None,
            )
    _print_table(per_batch, names, tokens, (h, w), resolution)
    if out is not None:
        print(f"wrote {len(paths)} merged token files{' and pictures' if picture else ''} to {out}")


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: set[str] = set()
    names = []
    for i, p in enumerate(paths):
        name = p.stem if p.stem not in seen else f"{p.stem}_{i}"
        seen.add(name)
        names.append(name)
    return names


def _write(out: Path, names, paths, merged, grid, tokens, stride, resolution, model, pixels) -> None:
    """Per image ``NAME.safetensors``: ``tokens [T, D]``, ``sizes [T]``, ``group [N]`` (int64,
    row-major over the grid), ``positions [T, 2]`` (mean row, col), ``anchors [T]``; and with
    pictures ``NAME.png``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for i, (name, path) in enumerate(zip(names, paths)):
        tensors = {
            "tokens": merged.tokens[i],
            "sizes": merged.sizes[i],
            "group": merged.group[i],
            "positions": merged.positions[i].float(),
            "anchors": merged.anchors[i],
        }
        meta = {
            "format": "radio-tome/1",
            "image": str(path),
            "model": model,
            "resolution": str(resolution),
            "grid": f"{grid[0]}x{grid[1]}",
            "tokens": str(tokens),
            "stride": f"{stride[0]}x{stride[1]}",
        }
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(out / f"{name}.safetensors"), meta
        )
        if pixels is not None:
            from PIL import Image

            from radio.compress.picture import group_picture

            group = merged.group[i].reshape(grid).cpu().numpy()
            Image.fromarray(group_picture(pixels[i], group)).save(out / f"{name}.png")


def _print_table(per_batch, names, tokens, grid, resolution) -> None:
    import torch
    from rich.table import Table

    from .console import make_console

    methods = per_batch[0]
    table = Table(
        title=f"token compression: {grid[0]}x{grid[1]} = {grid[0] * grid[1]} tokens at {resolution}px "
        f"→ budget {tokens}; relative MSE of the unmerged tokens (lower is better)"
    )
    table.add_column("method")
    table.add_column("tokens", justify="right")
    table.add_column("channels", justify="right")
    shown = names if len(names) <= MAX_IMAGE_COLUMNS else []
    for name in shown:
        table.add_column(name, justify="right")
    for col in ("mean", "worst", "cosine", "max group", "rounds", "detail"):
        table.add_column(col, justify="right" if col != "detail" else "left")
    for m, first in enumerate(methods):
        rows = [batch[m] for batch in per_batch]
        if first.relative_mse is None:
            cells = ["lossless"] * len(shown) + ["lossless", "lossless", "1.0000"]
        else:
            rel = torch.cat([r.relative_mse for r in rows])
            cos = torch.cat([r.cosine for r in rows])
            cells = [f"{v:.4f}" for v in rel[: len(shown)].tolist()]
            cells += [f"{rel.mean():.4f}", f"{rel.max():.4f}", f"{cos.mean():.4f}"]
        table.add_row(
            first.method,
            str(first.tokens),
            str(first.channels),
            *cells,
            str(max(r.max_group for r in rows)),
            "" if first.rounds is None else str(first.rounds),
            first.detail,
        )
    make_console().print(table)
