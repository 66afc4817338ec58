"""`radio viz pca`: pictures of features (the paper's mode-switching figure, Fig. 3 / A1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import user_errors
from .eval_cmd import (
    AdaptorOpt,
    DeviceOpt,
    ModelOpt,
    ResolutionsOpt,
    TeacherOpt,
    WeightsOpt,
    make_encoder,
    parse_resolutions,
)

app = typer.Typer(
    rich_markup_mode=None, help="Draw pictures of a student's or a teacher's features.", no_args_is_help=True
)


@app.command()
@user_errors
def pca(
    images: Annotated[Path, typer.Option("--images", help="a folder of images (searched recursively) or one image")],
    resolutions: ResolutionsOpt = "256,432,512,768,1024",
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: MODEL/eval/pca.png, or ./pca-TEACHER.png)")
    ] = None,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="rows: the first N images")] = 6,
    cell: Annotated[int, typer.Option("--cell", min=16, help="pixels per picture")] = 160,
    show_input: Annotated[bool, typer.Option("--input/--no-input", help="first column: the input image")] = True,
    model: ModelOpt = None,
    teacher: TeacherOpt = None,
    weights: WeightsOpt = None,
    adaptor: AdaptorOpt = None,
    device: DeviceOpt = None,
) -> None:
    """PNG grid of features projected on 3 principal components: a row per image, a column per resolution.

    The components are fitted per image, jointly on all its resolutions, so colours compare across
    columns. The layout (labels, each cell's box) is written beside the PNG as JSON.
    """
    from radio.evaluate.images import list_images
    from radio.evaluate.measure import pca_picture

    rs = parse_resolutions(resolutions)
    enc = make_encoder(model, teacher, weights, adaptor, device)
    if out is None:
        name = f"pca-{adaptor}.png" if adaptor else "pca.png"
        out = model / "eval" / name if model is not None else Path.cwd() / f"pca-{teacher}.png"
    layout = pca_picture(enc, list_images(images)[:max_images], rs, out, cell=cell, show_input=show_input)
    print(f"wrote {out} ({len(layout['rows'])} rows x {len(layout['columns'])} columns) and {out.with_suffix('.json')}")
