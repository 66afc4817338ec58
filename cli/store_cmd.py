"""`radio store info|verify|add-pixels PATH`: what a feature store holds, whether it is consistent, and
student pixels added to it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .console import make_console
from .errors import EXIT_FAILED, fail, user_errors

app = typer.Typer(rich_markup_mode=None, help="Inspect or check a feature store.", no_args_is_help=True)

# str, not Path: a Path would fold the `//` of an s3:// URL.
PathArg = Annotated[
    str, typer.Argument(help="the store: a directory or an object-store URL (store.path of the pipeline)")
]


@app.command()
@user_errors
def info(
    path: PathArg, as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False
) -> None:
    """Print target keys, rows, valid counts, bytes per sample per key and provenance."""
    from dataclasses import asdict

    from rich.table import Table

    from radio.store.inspect import store_info

    s = store_info(path)
    if as_json:
        keys = [asdict(k) | {"provenance": k.provenance.to_json()} for k in s["keys"]]  # the key's attributes as stored
        print(json.dumps(s | {"keys": keys, "pixels": [asdict(p) for p in s["pixels"]]}, indent=2, default=str))
        return
    console = make_console()
    bad = ", ".join(f"{r} {n}" for r, n in sorted(s["reasons"].items())) or "none"
    crops = f" ({s['crops_per_image']} crops, i.e. rows, each)" if s["crops_per_image"] > 1 else ""
    console.print(
        f"{s['path']}: {s['tars']} tars, {s['rows']} rows ({s['shard_rows']} per Zarr shard), "
        f"{s['samples']} samples{crops}, {s['valid']} valid; bad: {bad}"
    )
    table = Table(
        "target key",
        "teacher",
        "model",
        "weights",
        "grid",
        "dims (feat/sum)",
        "mosaic",
        "complete tars",
        "valid rows",
        "bytes/sample raw",
        "bytes/sample stored",
        "codec",
        "compact bytes/sample",
        "variance retained",
        "normalizer",
    )
    for k in s["keys"]:
        p = k.provenance
        table.add_row(
            k.key,
            p.teacher,
            p.model,
            p.weights,
            "x".join(map(str, p.grid)),
            f"{p.feature_dim}/{p.summary_dim or '-'}",
            str(p.mosaic or "-"),
            f"{k.complete_tars}/{k.tars}",
            str(k.valid_rows),
            str(k.raw_bytes_per_sample),
            f"{k.stored_bytes_per_sample:.0f}",
            (
                f"{k.codec}"
                + (f" rank {k.rank}" if k.rank else "")
                + f" ({k.compact_tars}/{k.tars} tars"
                + (", raw dropped)" if k.raw_dropped else ")")
            )
            if k.codec
            else "-",
            f"{k.compact_bytes_per_sample} ({k.compact_bytes_per_sample / k.raw_bytes_per_sample:.3f} of raw)"
            if k.codec
            else "-",
            f"{k.variance_retained:.5f}" if k.variance_retained is not None else "-",
            k.normalizer
            + (
                ""
                if k.normalizer_current is None
                else " (current)"
                if k.normalizer_current
                else " (not current: re-expressed)"
            ),
        )
    console.print(table)
    for p in s["pixels"]:
        quality = f" q{p.quality}" if p.quality else ""
        console.print(
            f"student pixels {p.resolution} px: {p.mode}{quality}, {p.complete_tars}/{p.tars} tars, "
            f"{p.raw_bytes_per_sample} bytes/sample raw, {p.stored_bytes_per_sample:.0f} bytes/sample stored"
        )


@app.command("add-pixels")
@user_errors
def add_pixels(
    path: PathArg,
    resolutions: Annotated[
        list[int] | None,
        typer.Option(
            "--resolution",
            "-r",
            help="a partition resolution to store views at; repeatable [default: those the store has planned]",
        ),
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="jpeg or raw, for resolutions not planned yet [default: jpeg]")
    ] = None,
    quality: Annotated[int, typer.Option("--quality", min=1, max=95, help="JPEG quality (jpeg mode)")] = 95,
    tars: Annotated[
        str | None,
        typer.Option("--tars", help="rewrite these tars' pixels (indices, comma-separated, or all), as verify lists"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace pixels stored with another mode or quality")
    ] = False,
) -> None:
    """Store each row's student view at partition resolutions without rerunning teachers.

    Reads every featurized tar's recorded crop boxes from its manifest and decodes its images once;
    resumable (tars already marked are skipped). Distill then reads these views instead of the tars.
    """
    from radio.featurize.pixels import add_pixels as run
    from radio.featurize.pixels import plan_pixels
    from radio.store import lease
    from radio.store import pixels as px

    fs = _open_writable(path, "store add-pixels")
    planned = px.pixel_resolutions(fs)
    chosen = sorted(set(resolutions or planned))
    if not chosen:
        raise fail(f"{path}: no student pixels planned; give --resolution (the stages' partition resolutions)")
    if mode is not None and mode not in px.MODES:
        raise fail(f"--mode {mode!r}: use {' or '.join(px.MODES)}")
    redo: list[int] = []
    if tars is not None:
        try:
            redo = list(range(len(fs.plan.tars))) if tars == "all" else [int(t) for t in tars.split(",") if t.strip()]
        except ValueError:
            raise fail(f"--tars {tars!r}: expected tar indices like 3,7, or all") from None
        if any(not 0 <= t < len(fs.plan.tars) for t in redo):
            raise fail(f"--tars {tars!r}: the store has tars 0..{len(fs.plan.tars) - 1}")
    with lease.take(path, "writer", "store add-pixels", destructive=overwrite or bool(redo)):
        fs.location.remove_temporaries()  # a killed run's half-written files
        for r in chosen:
            if r not in planned or mode is not None or overwrite:
                spec_mode = mode or (px.pixel_spec(fs, r).mode if r in planned else "jpeg")
                plan_pixels(fs, spec_mode, quality, [r], overwrite)
        for r in chosen:
            px.mark_pixels_incomplete(fs, r, redo)
        report = run(fs, chosen)
    for r in chosen:
        done = int(px.pixels_completed(fs, r).sum())
        print(
            f"student pixels {r} px: {report.written[r]} tars written, {report.skipped[r]} already complete, "
            f"{done}/{len(fs.plan.tars)} done"
        )
    if report.no_manifest:
        print(f"{len(report.no_manifest)} tars not featurized yet: `radio featurize` writes their pixels")


@app.command()
@user_errors
def verify(path: PathArg) -> None:
    """Re-check every checksum and every complete target key (finite targets; markers, manifest and arrays
    agree); exit 1 on problems, printing the commands that redo just the damaged (tar, key) pairs."""
    from radio.store.inspect import repair_commands, verify_report

    report = verify_report(path)
    for n in report.notes:
        print(f"note: {n}")
    if report.problems:
        for p in report.problems:
            print(f"problem: {p}")
        for c in repair_commands(path, report):
            print(f"repair: {c}")
        print(f"{path}: {len(report.problems)} problems")
        raise typer.Exit(EXIT_FAILED)
    print(f"{path}: ok")


@app.command()
@user_errors
def invalidate(
    path: PathArg,
    key: Annotated[str, typer.Option("--key", "-k", help="the target key")],
    tars: Annotated[
        str, typer.Option("--tars", help="tar indices, comma-separated (as `radio store verify` lists them)")
    ],
) -> None:
    """Mark (tar, key) pairs incomplete so that a plain `radio featurize` redoes exactly them."""
    from radio.store.invalidate import invalidate as run
    from radio.store.layout import FeatureStore

    try:
        chosen = [int(t) for t in tars.split(",") if t.strip()]
    except ValueError:
        raise fail(f"--tars {tars!r}: expected tar indices like 3,7") from None
    run(FeatureStore(path), key, chosen)
    print(f"{key}: {len(set(chosen))} tars marked incomplete; run `radio featurize` to redo them")


@app.command()
@user_errors
def compact(
    path: PathArg,
    keys: Annotated[
        list[str] | None, typer.Option("--keys", "-k", help="target keys; repeatable [default: all]")
    ] = None,
    codec: Annotated[str, typer.Option("--codec", help="int8 or fp8 (float8 e4m3), one byte per value")] = "int8",
    rank: Annotated[int | None, typer.Option("--rank", min=1, help="keep the leading R principal coefficients")] = None,
    variance: Annotated[
        float | None, typer.Option("--variance", help="keep the fewest principal coefficients holding this share")
    ] = None,
    clip: Annotated[float, typer.Option("--clip", help="clip at this many σ of PHI-S space")] = 4.0,
    summary: Annotated[
        bool, typer.Option("--summary", help="compact the summary too (in its own PHI-S space)")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="redo keys compacted with other settings or in a replaced PHI-S (raw "
            "targets only stored compact are first restored from them)",
        ),
    ] = False,
    drop_raw: Annotated[
        bool,
        typer.Option("--drop-raw", help="delete the raw fp16 arrays once `store verify` passes on the compact ones"),
    ] = False,
) -> None:
    """Rewrite keys' features (and --summary) in PHI-S space as int8/fp8, optionally rank-truncated.

    Runs after `radio fit-phis`; resumable per (tar, key) like featurize (in the PHI-S a key was
    first compacted in, also after a refit); records the codec in the key's provenance. The
    trainer then reads these keys compact and decodes them on its device (re-expressed in the
    current PHI-S when a refit replaced theirs). Every key is checked before any is compacted.
    """
    from radio.store import lease

    fs = _open_writable(path, "store compact")
    # --drop-raw deletes raw targets and --overwrite rewrites compact ones: never under a training run.
    with lease.take(path, "writer", "store compact", destructive=drop_raw or overwrite):
        fs.location.remove_temporaries()  # a killed compact's half-written files
        _compact(fs, path, keys, codec, rank, variance, clip, summary, overwrite, drop_raw)


def _open_writable(path: str, command: str):
    from radio.store.layout import FeatureStore

    fs = FeatureStore(path)
    fs.location.require_writable(command)
    return fs


def _compact(
    fs,
    path: str,
    keys: list[str] | None,
    codec: str,
    rank: int | None,
    variance: float | None,
    clip: float,
    summary: bool,
    overwrite: bool,
    drop_raw: bool,
) -> None:
    from radio.store import compact as c
    from radio.store.inspect import verify_store

    chosen = keys or fs.target_keys
    for key in chosen:  # every key's request checked before any work: nothing is written if one is refused
        c.plan_compact(
            fs, key, codec=codec, rank=rank, variance=variance, clip=clip, summary=summary, overwrite=overwrite
        )
    for key in chosen:
        n = c.compact_store_key(
            fs, key, codec=codec, rank=rank, variance=variance, clip=clip, summary=summary, overwrite=overwrite
        )
        ck = c.compact_key(fs, key)
        assert ck is not None  # just compacted
        kept = c.variance_retained(fs, key)
        print(
            f"{key}: {ck.features.describe()}, {n} tars compacted, "
            f"{int(c.compact_complete(fs, key).sum())}/{len(fs.plan.tars)} done, variance retained "
            + (f"{kept:.5f}" if kept is not None else "-")
        )
    if drop_raw:
        problems = verify_store(path, chosen)
        if problems:
            for p in problems:
                print(f"problem: {p}")
            print(f"{path}: {len(problems)} problems; raw targets kept")
            raise typer.Exit(EXIT_FAILED)
        for key in chosen:
            if not c.reads_compact(fs, key):
                raise fail(f"{key}: not every featurized tar is compacted; raw targets kept")
            c.drop_raw(fs, key)
            print(f"{key}: raw targets dropped")
