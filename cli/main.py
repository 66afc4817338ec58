"""The `radio` command: one sub-command per step of the pipeline.

Heavy libraries (torch, ray, zarr) are imported inside commands so `radio --help` is instant.
"""

from __future__ import annotations

import typer

from . import config_cmd, eval_cmd, probe_cmd, store_cmd, viz_cmd
from .compress_cmd import compress
from .distill_cmd import distill
from .experiment_cmd import experiment
from .export_cmd import export, plot
from .featurize_cmd import featurize
from .fit_phis_cmd import fit_phis
from .sample_data import sample_data
from .scan import scan
from .teachers_cmd import teachers

app = typer.Typer(
    name="radio",
    help=(
        "Train agglomerative vision foundation models (RADIO-AMP): featurize teachers into a Zarr "
        "store, fit PHI-S normalizers, distill a ViT student. Settings come from pipelines.yaml."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Click's plain help: a boolean option reads `--overwrite`, not `--overwrite <bool>` as rich
    # rendering shows it (which looks as if a value were needed).
    rich_markup_mode=None,
)
# In pipeline order, which is the order `radio --help` lists them in.
app.command("sample-data")(sample_data)
app.command("scan")(scan)
app.command("teachers")(teachers)
app.add_typer(config_cmd.app, name="config")
app.command("featurize")(featurize)
app.add_typer(store_cmd.app, name="store")
app.command("fit-phis")(fit_phis)
app.command("distill")(distill)
app.command("plot")(plot)
app.command("export")(export)
probe_cmd.register(eval_cmd.app)  # eval seg|depth|correspondence
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(viz_cmd.app, name="viz")
app.command("compress")(compress)
app.command("experiment")(experiment)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
