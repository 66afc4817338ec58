"""Small-scale reproductions of the paper's findings (`radio experiment NAME|all`).

Each module states one claim of *RADIO Amplified* in its docstring and tests it on CPU with the
tiny random-init teachers, through the ordinary commands' library functions (featurize,
fit-phis, distill, export, eval, compress), writing a table, a picture and a JSON under
``runs/experiments/NAME/``.
"""

from __future__ import annotations

if __name__ != "radio.experiments":  # one file, one module: the folder is the package radio.experiments
    raise ImportError(f"import radio.experiments, not {__name__}: experiments/ is importable only as radio.experiments")

import time
from pathlib import Path
from types import ModuleType

from .common import ExperimentError, Outcome, Scale, update_readme, write_outputs

NAMES = ("phis_balance", "multires", "mosaic", "token_merging", "shift")


def module(name: str) -> ModuleType:
    import importlib

    if name not in NAMES:
        raise ExperimentError(f"unknown experiment {name!r} (known: {', '.join(NAMES)}, all)")
    return importlib.import_module(f"{__name__}.{name}")


def run_experiment(name: str, out_root: Path, smoke: bool = False, readme: Path | None = None) -> Outcome:
    """Run experiment ``name`` into ``out_root/name``; with ``readme``, update its README block."""
    mod = module(name)
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    outcome = mod.run(out, Scale(smoke))
    outcome.seconds = time.perf_counter() - t0
    outcome.smoke = smoke
    write_outputs(outcome, out)
    if readme is not None:
        update_readme(outcome, out, readme, readme.parent / "docs" / "experiments")
    return outcome


__all__ = ["NAMES", "ExperimentError", "Outcome", "run_experiment"]
