"""The run folder: the one place that names what `radio distill` writes and `radio export` reads.

A run folder (the pipeline's ``out``, or ``--out``) holds::

    manifest/                 the store's columnar manifest, built once per run (workers memory-map it)
    stage1/                   one folder per stage, numbered from 1
        checkpoint.pt         the full training state of the last checkpoint (resume)
        final.safetensors     the student's weights once the stage finished, plus what export needs
        metrics.jsonl         one JSON record per step
        config.yaml           the pipeline the stage ran with
        reprojected.json      heads moved into a refitted normalizer's space when the stage started (if any)
    stage2/ ...

These names are on disk in every run ever written: they never change (old runs must still resume
and export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "final.safetensors"
METRICS = "metrics.jsonl"
STAGE_CONFIG = "config.yaml"
REPROJECTED = "reprojected.json"
MANIFEST = "manifest"
STAGE_PREFIX = "stage"  # stage N lives in ``stageN``


@dataclass(frozen=True)
class StageFolder:
    """``RUN/stageN``: one stage's checkpoint, final weights, metrics and config."""

    path: Path
    number: int

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def weights(self) -> Path:
        """The stage's final weights (written only when it finished)."""
        return self.path / FINAL_WEIGHTS

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def config(self) -> Path:
        return self.path / STAGE_CONFIG

    @property
    def reprojected(self) -> Path:
        """The heads re-projected into a refitted normalizer when the stage started (JSON list)."""
        return self.path / REPROJECTED

    @property
    def finished(self) -> bool:
        return self.weights.is_file()


@dataclass(frozen=True)
class RunFolder:
    """A run folder (see the module docstring); names paths, creates nothing."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # callers pass str or Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def stage(self, n: int) -> StageFolder:
        return StageFolder(self.root / f"{STAGE_PREFIX}{n}", n)

    def finished_stages(self) -> list[int]:
        """The numbers of the stages with final weights, highest first (export's default is the first)."""
        names = (d.name[len(STAGE_PREFIX) :] for d in self.root.glob(f"{STAGE_PREFIX}*"))
        return sorted((int(n) for n in names if n.isdigit() and self.stage(int(n)).finished), reverse=True)

    def metrics_files(self) -> list[Path]:
        """Every stage's metrics file, sorted by path (``stage10`` before ``stage2``)."""
        return sorted(self.root.glob(f"{STAGE_PREFIX}*/{METRICS}"))


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file (:attr:`StageFolder.metrics`); none when it does not exist."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
