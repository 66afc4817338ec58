"""`radio store info|verify PATH`: what a feature store holds, and whether it is consistent."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .console import make_console
from .errors import EXIT_FAILED, user_errors

app = typer.Typer(help="Inspect or check a feature store.", no_args_is_help=True)

# str, not Path: a Path would fold the `//` of an s3:// URL.
PathArg = Annotated[str, typer.Argument(help="the store: a directory or an object-store URL (store.path of the pipeline)")]


@app.command()
@user_errors
def info(path: PathArg, as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False) -> None:
    """Print target keys, rows, valid counts, bytes per sample per key and provenance."""
    from dataclasses import asdict

    from rich.table import Table

    from radio.store.inspect import store_info

    s = store_info(path)
    if as_json:
        print(json.dumps(s | {"keys": [asdict(k) for k in s["keys"]]}, indent=2, default=str))
        return
    console = make_console()
    bad = ", ".join(f"{r} {n}" for r, n in sorted(s["reasons"].items())) or "none"
    console.print(f"{s['path']}: {s['tars']} tars, {s['rows']} rows ({s['shard_rows']} per Zarr shard), "
                  f"{s['samples']} samples, {s['valid']} valid; bad: {bad}")  # fmt: skip
    table = Table("target key", "teacher", "model", "weights", "grid", "dims (feat/sum)", "mosaic", "complete tars",
                  "valid rows", "bytes/sample raw", "bytes/sample stored")  # fmt: skip
    for k in s["keys"]:
        p = k.provenance
        table.add_row(k.key, p["teacher"], p["model"], p["weights"], "x".join(map(str, p["grid"])),
                      f"{p['feature_dim']}/{p['summary_dim'] or '-'}", str(p["mosaic"] or "-"),
                      f"{k.complete_tars}/{k.tars}", str(k.valid_rows), str(k.raw_bytes_per_sample),
                      f"{k.stored_bytes_per_sample:.0f}")  # fmt: skip
    console.print(table)


@app.command()
@user_errors
def verify(path: PathArg) -> None:
    """Check every complete target key: finite targets, and markers, manifest and arrays agree; exit 1 on problems."""
    from radio.store.inspect import verify_store

    problems = verify_store(path)
    if problems:
        for p in problems:
            print(f"problem: {p}")
        print(f"{path}: {len(problems)} problems")
        raise typer.Exit(EXIT_FAILED)
    print(f"{path}: ok")
