"""`radio teachers`: every registered teacher (plugins included), with its weights' licence."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .console import make_console
from .errors import user_errors


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


@user_errors
def teachers(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="teachers to describe, e.g. timm:vit_large_patch16_dinov3 [default: every registered one]"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List teachers: library, weights id, patch, native resolution, dims, parameters, licence.

    Any name a config's `model:` takes can be given: registered names, installed plugins'
    names, `timm:MODEL`, `open_clip:MODEL`, `hf:ORG/NAME` or a folder, `package.module:builder`.
    Models are built on the meta device (nothing is allocated or downloaded).
    """
    from radio.featurize.teachers import list_teachers
    from radio.featurize.teachers.catalogue import teacher_row

    rows = [teacher_row(n) for n in (names or list_teachers())]
    if as_json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return
    from rich.table import Table

    table = Table("teacher", "library", "weights", "patch", "res", "summary", "features", "params", "licence")
    for r in rows:
        table.add_row(
            r.name,
            r.library,
            r.weights or "random init",
            str(r.patch),
            f"{r.resolution}{' canvas' if r.canvas else ''}",
            "-" if r.summary_dim is None else str(r.summary_dim),
            str(r.feature_dim),
            _count(r.parameters),
            r.licence or "-",
        )
    make_console().print(table)
