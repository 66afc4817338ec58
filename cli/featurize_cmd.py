"""`radio featurize`: run teachers over the shards into the store (phase 1), on Ray, resumable."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .errors import EXIT_FAILED, user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, DataOpt, OutOpt, PipelineOpt, StoreOpt, load


@user_errors
def featurize(
    teacher: Annotated[
        list[str] | None,
        typer.Option(
            "--teacher", "-t", help="teacher name, family (sam), model or target key; repeatable [default: all]"
        ),
    ] = None,
    mosaic: Annotated[
        int | None,
        typer.Option(
            "--mosaic",
            help="mosaic factor k (1, 2, 4, ...) for the selected SAM keys whose resolution fits "
            "k x k tiles of the canvas; the others keep theirs and are named",
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address [default: RAY_ADDRESS, else a local instance]")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="teacher actors [default: one per GPU, else 1]")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="recompute the selected target keys from scratch")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait while another run writes the store, instead of exiting")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="show Ray's own log lines instead of writing them to OUT/logs/")
    ] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    data: DataOpt = None,
    store: StoreOpt = None,
    out: OutOpt = None,
) -> None:
    """Run every teacher over the pipeline's shards and write fp16 targets and moments into the store.

    Re-running the same command resumes: complete (tar, target key) pairs are skipped. Every
    teacher's weights are checked before the store is planned or Ray is started.
    """
    from radio.config.mosaic import is_power_of_two
    from radio.featurize.job import run_featurize

    from .featurize_report import Progress, print_summary

    cfg = load(config, pipeline, data, store, out)  # Ray's log file goes to OUT/logs/
    if mosaic is not None and not is_power_of_two(mosaic):
        from .errors import fail

        raise fail(f"--mosaic {mosaic} must be a power of two (1, 2, 4, ...)")
    with Progress(sys.stderr.isatty()) as progress:
        report = run_featurize(
            cfg,
            teachers=teacher,
            mosaic=mosaic,
            address=address,
            workers=workers,
            overwrite=overwrite,
            verbose=verbose,
            on_result=progress.update,
            wait=wait,
            on_note=lambda line: print(f"note: {line}", file=sys.stderr),
        )
    print_summary(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)
