"""`radio config show|validate`: print or check the resolved pipeline."""

from __future__ import annotations

import typer

from .errors import user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, DataOpt, OutOpt, PipelineOpt, StoreOpt, load

app = typer.Typer(rich_markup_mode=None, help="Show or check the pipelines file.", no_args_is_help=True)


@app.command()
@user_errors
def show(
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    data: DataOpt = None,
    store: StoreOpt = None,
    out: OutOpt = None,
) -> None:
    """Print the resolved pipeline (defaults filled in, overrides applied) as YAML."""
    from radio.config import to_yaml

    print(to_yaml(load(config, pipeline, data, store, out)), end="")


@app.command()
@user_errors
def validate(
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    data: DataOpt = None,
    store: StoreOpt = None,
    out: OutOpt = None,
) -> None:
    """Check every pipeline in the file (and the chosen one with overrides); exit 2 on the first problem."""
    from radio.config import read_pipelines

    pipelines = read_pipelines(config)
    chosen = load(config, pipeline, data, store, out)
    names = ", ".join(pipelines.pipelines)
    keys = ", ".join(chosen.target_keys)
    print(f"{config}: ok: {len(pipelines.pipelines)} pipelines ({names})")
    print(
        f"{pipeline or pipelines.default}: {len(chosen.teachers)} teachers, target keys {keys}, "
        f"{len(chosen.stages)} stages"
    )
