"""Options every command shares: which config, which pipeline, and the named overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path, typer.Option("--config", help="pipelines file", show_default=True, dir_okay=False)]
PipelineOpt = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="named pipeline [default: the file's `default`]")
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", help="override data.shards: a folder of tars, a glob, a brace range {000..009}, URLs; comma-separated"
    ),
]
StoreOpt = Annotated[str | None, typer.Option("--store", help="override store.path")]
OutOpt = Annotated[str | None, typer.Option("--out", help="override the run folder")]

DEFAULT_CONFIG = Path("pipelines.yaml")


def load(config: Path, pipeline: str | None, data: str | None = None, store: str | None = None, out: str | None = None):
    """The resolved :class:`~radio.config.PipelineConfig` for a command's options."""
    from radio.config import load_pipeline

    return load_pipeline(config, pipeline, data=data, store=store, out=out)
