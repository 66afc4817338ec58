"""`radio export` and `radio plot`: ship a trained student; look at a run's loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, PipelineOpt, StoreOpt, load

RunOpt = Annotated[Path | None, typer.Option("--run", help="run folder [default: the pipeline's `out`]")]


FORMAT_HELP = (
    "radio: for radio.load; keeps adaptors and each teacher's PHI-S inverse. "
    "timm: backbone for timm's vit_*_patch16_radio_v3, grid resampled for one img_size (equal to radio.load "
    "only there). timm-naflex: backbone for timm's naflexvit_*_radio_v3/v4, full CPE grid (equal at any size "
    "and aspect). hf: folder for transformers.RadioModel.from_pretrained, no remote code (backbone; equal "
    "where the longer side is cpe_max_size). "
    "onnx: backbone graph, dynamic batch/height/width. All but radio drop the adaptors; every format "
    "exports the EMA weights instead with --ema."
)


@user_errors
def export(
    out: Annotated[Path, typer.Option("--out", help="folder to write the export into")],
    run: RunOpt = None,
    stage: Annotated[
        int | None, typer.Option("--stage", help="stage to export [default: the last finished one]")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    store: StoreOpt = None,
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "radio",
    ema: Annotated[
        bool,
        typer.Option("--ema", help="export the EMA weights the run kept instead of the student's (exit 2: none kept)"),
    ] = False,
) -> None:
    """Export the trained student: for `radio.load` (student, adaptors, each teacher's PHI-S
    inverse), or its backbone for timm, transformers or ONNX (--format).

    Reads only the run folder: a stage's final weights carry the dims, normalizers and teacher
    provenance, so neither the store nor (with --run) the pipelines file is needed.
    """
    from radio.distill.export import export_as

    cfg: Any = load(config, pipeline, store=store) if run is None or pipeline or store else None  # set if run is None
    where, line = export_as(run or Path(cfg.out), out, _store_if_present(cfg), cfg, stage, fmt, ema)
    print(f"exported to {where}: {line}")


def _store_if_present(cfg):
    """The pipeline's store when it is here (only weights written by an older radio need it)."""
    from radio.store.layout import FeatureStore, StoreError

    if cfg is None:
        return None
    try:
        return FeatureStore(cfg.store.path)
    except StoreError:
        return None


@user_errors
def plot(
    run: RunOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
) -> None:
    """Write loss-curve PNGs (total, per target key, learning rate) for every stage of a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from radio.distill.run import METRICS, RunFolder, read_metrics

    folder = run or Path(load(config, pipeline).out)
    stages = RunFolder(folder).metrics_files()
    if not stages:
        from .errors import fail

        raise fail(f"{folder}: no stage*/{METRICS} to plot; run `radio distill` first")
    for path in stages:
        records = read_metrics(path)
        steps = [r["step"] for r in records]
        losses = sorted(k for k in records[0] if "/" in k)
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(18, 4.5))
        a.plot(steps, [r["total"] for r in records])
        a.set(title=f"{path.parent.name}: total loss", xlabel="step", yscale="log")
        for k in losses:
            b.plot(steps, [r[k] for r in records], label=k)
        b.set(title="per target key (resolution:key/stream)", xlabel="step", yscale="log")
        b.legend(fontsize=6)
        c.plot(steps, [r["lr"] for r in records])
        c.set(title="learning rate", xlabel="step")
        for ax in (a, b, c):
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        png = path.parent / "losses.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        print(f"{png}")
