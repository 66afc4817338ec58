"""`radio experiment NAME|all`: reproduce one of the paper's findings at small scale (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import fail, user_errors


@user_errors
def experiment(
    name: Annotated[str, typer.Argument(help="phis_balance, multires, mosaic, token_merging, shift, or all")],
    smoke: Annotated[
        bool, typer.Option("--smoke", help="seconds-long run (tests): tiny sizes, README untouched")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="results go to OUT/NAME/")] = Path("runs/experiments"),
    readme: Annotated[
        Path, typer.Option("--readme", help="README whose experiment blocks a full run regenerates (if it has them)")
    ] = Path("README.md"),
) -> None:
    """Run an experiment of `radio.experiments` end to end (featurize, fit-phis, distill, eval,
    compress on the tiny random-init teachers) and write a table, a picture and a JSON to
    OUT/NAME/; a full run also regenerates the experiment's README section."""
    import os

    from radio.experiments import NAMES, ExperimentError, run_experiment

    names = list(NAMES) if name == "all" else [name]
    if any(n not in NAMES for n in names):
        raise fail(f"unknown experiment {name!r} (known: {', '.join(NAMES)}, all)")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    marker_ok = readme.is_file() and all(f"<!-- experiment:{n}:start -->" in readme.read_text() for n in names)
    target = readme if (not smoke and marker_ok) else None
    for n in names:
        try:
            outcome = run_experiment(n, out, smoke=smoke, readme=target)
        except ExperimentError as e:
            raise fail(f"experiment {n}: {e}", 1) from None
        status = "reproduced" if outcome.agrees else "NOT reproduced"
        print(f"== {n}: {status} ({outcome.seconds:.0f} s); {out / n}/result.json, table.md, {outcome.picture}")
        print((out / n / "table.md").read_text())
        print(outcome.verdict + "\n")
    if not smoke and target is None:
        print(f"{readme}: no experiment blocks to regenerate; the sections are in {out}/NAME/section.md")
