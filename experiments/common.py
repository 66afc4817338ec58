"""What every experiment shares: a work folder, sample data, a pipeline built in code, and the
ordinary commands' library functions (featurize, fit-phis, distill, export, eval) run in order.

An experiment writes to ``runs/experiments/NAME/``: ``result.json`` (every number), ``table.md``
(the README table), ``NAME.png`` (the picture) and ``section.md`` (claim, table, picture, verdict),
which :func:`update_readme` splices into README.md between the experiment's markers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radio.config import PipelineConfig
from radio.config.load import ConfigError, format_validation_error
from radio.errors import RadioError


class ExperimentError(RadioError):
    """An experiment that cannot run (unknown name, a pipeline step that failed)."""


@dataclass(frozen=True)
class Scale:
    """How big a run is: ``smoke`` (seconds, for tests) or the full CPU size (minutes)."""

    smoke: bool

    def pick(self, full: Any, smoke: Any) -> Any:
        return smoke if self.smoke else full


@dataclass
class Outcome:
    """What an experiment found: the table rows, whether the paper's direction holds, why."""

    name: str
    claim: str
    table: list[dict[str, Any]]
    agrees: bool
    verdict: str
    picture: str
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    smoke: bool = False


def pipeline(
    name: str,
    root: Path,
    teachers: dict,
    stages: list[dict],
    *,
    normalization: str = "phis",
    held_out: int = 8,
    shard_rows: int = 8,
    batch_size: int = 8,
    student: dict | None = None,
) -> PipelineConfig:
    """A :class:`PipelineConfig` (the pipelines.yaml schema, validated the same way) rooted at ``root``."""
    from pydantic import ValidationError

    raw = {
        "description": f"radio experiment {name}",
        "data": {"shards": [str(root / "shards" / "*.tar")]},
        "store": {"path": str(root / "store.zarr"), "shard_rows": shard_rows},
        "featurize": {"seed": 0, "batch_size": batch_size},
        "teachers": teachers,
        "normalization": normalization,
        "student": student or {"size": "tiny", "cpe_max_size": 512, "adaptor_hidden": 64},
        "stages": stages,
        "eval": {"held_out": held_out},
        "out": str(root / "run"),
    }
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(f"experiment {name}", e)) from None


def with_changes(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    """``config`` with top-level fields replaced, re-validated."""
    return PipelineConfig.model_validate(config.model_dump() | changes)


def sample_shards(root: Path, images: int, shard_size: int, seed: int = 0) -> Path:
    """DataComp-layout shards of the bundled photos (`radio sample-data`), made once per folder."""
    from radio.shards.sampledata import write_sample_data

    out = root / "shards"
    if not any(out.glob("*.tar")):
        write_sample_data(out, images=images, shard_size=shard_size, seed=seed, failed=0)
    return out


def photo_files(root: Path, names: Sequence[str], size: int = 512) -> list[Path]:
    """The named bundled photos (``radio.shards.sampledata.PHOTOS``) as PNG files under ``root/images``."""
    from PIL import Image

    from radio.shards.sampledata import load_photo

    out = root / "images"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out / f"{name}.png"
        if not path.is_file():
            img = Image.fromarray(load_photo(name)).convert("RGB")
            img.thumbnail((size, size))
            img.save(path)
        paths.append(path)
    return paths


def featurize(config: PipelineConfig, teachers: list[str] | None = None, mosaic: int | None = None):
    """`radio featurize` (its library entry, on the local Ray instance); fails on a failed tar."""
    from radio.featurize.job import run_featurize

    report = run_featurize(config, teachers=teachers, mosaic=mosaic)
    if report.failed:
        raise ExperimentError(f"featurize failed: {report.failed[0].error}")
    return report


def fit_phis(config: PipelineConfig):
    """`radio fit-phis`: PHI-S (and the moments `standardize` uses) from the store's moments."""
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    return fit_store(FeatureStore(config.store.path), None, False, None, config.phis_key_weighting)


def distill(config: PipelineConfig, out: Path) -> Path:
    """`radio distill --stage N` for every stage in turn, then `radio export`; returns the export folder."""
    from radio.distill.export import export
    from radio.distill.trainer import train_stage
    from radio.store.layout import FeatureStore

    for stage in range(1, len(config.stages) + 1):
        result = train_stage(config, stage, out=out)
        if result.end_step < result.total_steps:
            raise ExperimentError(f"distill stage {stage} stopped at step {result.end_step}/{result.total_steps}")
    return export(out, out / "export", FeatureStore(config.store.path), config)


def fidelity(config: PipelineConfig, export_dir: Path):
    """`radio eval fidelity` on the held-out rows (the library function the command calls)."""
    from radio.distill.export import load
    from radio.evaluate.measure import measure_fidelity
    from radio.store.layout import FeatureStore

    return measure_fidelity(load(export_dir), FeatureStore(config.store.path), config, "held-out")


def fresh(root: Path) -> Path:
    """An empty work folder (a re-run starts over: experiments are cheap and must not mix runs)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_outputs(outcome: Outcome, out: Path) -> None:
    """``result.json``, ``table.md`` and ``section.md`` (the picture is already in ``out``)."""
    (out / "result.json").write_text(json.dumps(outcome.__dict__, indent=2, default=str))
    (out / "table.md").write_text(markdown_table(outcome.table) + "\n")
    (out / "section.md").write_text(section(outcome, f"runs/experiments/{outcome.name}/{outcome.picture}"))


def section(outcome: Outcome, picture: str) -> str:
    status = "reproduced" if outcome.agrees else "**not reproduced**"
    return (
        f"**Claim.** {outcome.claim}\n\n{markdown_table(outcome.table)}\n\n"
        f"**Result ({status}).** {outcome.verdict}\n\n![{outcome.name}]({picture})\n"
    )


def update_readme(outcome: Outcome, out: Path, readme: Path, pictures: Path) -> None:
    """Replace the experiment's block of ``readme`` (between its markers) with its section; the
    picture is copied to ``pictures`` (committed, unlike ``runs/``)."""
    pictures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / outcome.picture, pictures / outcome.picture)
    rel = (pictures / outcome.picture).relative_to(readme.parent)
    start, end = f"<!-- experiment:{outcome.name}:start -->", f"<!-- experiment:{outcome.name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ExperimentError(f"{readme}: no {start} ... {end} block to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{section(outcome, str(rel))}{end}{tail}")


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
