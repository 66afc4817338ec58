"""`radio fit-phis`: one PHI-S normalizer per teacher from the store's moments of all its keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .console import make_console
from .errors import user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, PipelineOpt, StoreOpt, load


@user_errors
def fit_phis(
    keys: Annotated[
        list[str] | None,
        typer.Option("--keys", "-k", help="fit the teachers of these target keys; repeatable [default: all]"),
    ] = None,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="fit keys whose featurize is incomplete, from the tars done so far")
    ] = False,
    max_tars: Annotated[
        int | None,
        typer.Option("--max-tars", min=2, help="fit from an evenly spaced sample of this many tars (huge stores)"),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="eigenvalue-spectra PNG [default: STORE/phis_spectra.png]")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    store: StoreOpt = None,
) -> None:
    """Fit PHI-S (a rotation and one scale per teacher, from the merged moments of all its target
    keys: one space per adaptor head) from the featurize moments; idempotent. --keys chooses teachers.

    Prints per teacher, and per key as diagnostics, the vectors used, φ and the share of variance
    in the top 1/10/100 principal components, then each key's variance in its teacher's normalized
    space (the config's phis_key_weighting decides how keys are merged), and plots the spectra.
    """
    from radio.store import lease
    from radio.store.layout import FeatureStore

    cfg = load(config, pipeline, store=store)
    fs = FeatureStore(cfg.store.path)
    fs.location.require_writable("fit-phis")
    # A replaced normalizer changes the space a training run's targets are read in: never under one.
    with lease.take(cfg.store.path, "writer", "fit-phis", destructive=True):
        _fit(fs, keys, allow_partial, max_tars, plot, cfg.phis_key_weighting)


def _fit(
    fs, keys: list[str] | None, allow_partial: bool, max_tars: int | None, plot: Path | None, weighting: str
) -> None:
    from rich.table import Table

    from radio.store.normalizers import fit_store, write_spectra

    reports = fit_store(fs, keys, allow_partial, max_tars, weighting)
    table = Table(
        "teacher / target key",
        "stream",
        "tars",
        "rows",
        "vectors",
        "φ",
        "top 1",
        "top 10",
        "top 100",
        "Hadamard",
        "",
        title="PHI-S: one normalizer per teacher (indented: each key's own spectrum, diagnostics)",
    )
    for r in reports:
        p = r.phis
        table.add_row(
            r.teacher,
            r.stream,
            str(r.tars),
            "",
            str(r.count),
            f"{p.phi:.4g}",
            f"{p.variance_share(1):.1%}",
            f"{p.variance_share(10):.1%}",
            f"{p.variance_share(100):.1%}",
            r.hadamard,
            "unchanged" if r.unchanged else "fitted",
        )
        for k in r.spectra:
            tokens = 1 if r.stream == "summary" else fs.target(k.key).grid[0] * fs.target(k.key).grid[1]
            table.add_row(
                f"  {k.key}",
                r.stream,
                str(k.tars),
                str(k.count // tokens),
                str(k.count),
                f"{k.phi:.4g}",
                f"{k.variance_share(1):.1%}",
                f"{k.variance_share(10):.1%}",
                f"{k.variance_share(100):.1%}",
                "",
                "",
            )
    make_console().print(table)
    # Unit variance holds for the merge, not for each key: the keys a head trains on at low resolution may sit lower.
    for r in reports:
        for key, v in zip(r.keys, r.key_variances):
            print(f"variance in {r.teacher}/{r.stream} space ({r.key_weighting}-weighted keys): {key} {v:.4g}")
    fitted = sum(not r.unchanged for r in reports)
    print(f"PHI-S: {fitted} fitted, {len(reports) - fitted} unchanged (same moments as the stored ones)")
    # Earlier normalizers stay in the store: compact targets are decoded in the one they were encoded in.
    print("current normalizers: " + ", ".join(f"{r.teacher}/{r.stream} {r.fingerprint}" for r in reports))
    png = plot_spectra(reports)
    if plot is None:  # beside the store's arrays, also when the store is an object-store URL
        out = write_spectra(fs, png)
    else:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(png)
        out = str(plot)
    print(f"eigenvalue spectra: {out}")


def plot_spectra(reports) -> bytes:
    """The eigenvalue spectra as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = sorted({r.stream for r in reports})
    fig, axes = plt.subplots(1, len(streams), figsize=(6 * len(streams), 4.5), squeeze=False)
    for ax, stream in zip(axes[0], streams):
        for r in (r for r in reports if r.stream == stream):
            curves = [(f"{r.teacher}: normalizer", r.phis.eigenvalues, r.phis.phi, "-")]
            curves += [(k.key, k.eigenvalues, k.phi, ":") for k in r.spectra]
            for label, ev, phi, style in curves:
                ax.semilogy(
                    range(1, len(ev) + 1),
                    ev.clip(min=ev.max() * 1e-12 if ev.max() > 0 else 1e-30),
                    style,
                    label=f"{label} (φ={phi:.3g})",
                )
        ax.set(title=f"{stream}: eigenvalues of the covariance", xlabel="component", ylabel="eigenvalue (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
