"""The held-out split: which valid rows a run trains on and which it keeps for evaluation.

A pure function of the store (its completion markers and manifests) and ``held_out``, so the
trainer, the evaluators and a resumed run all agree on it without recording it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import FeatureStore
from .manifest import Manifest


@dataclass(frozen=True)
class RowSplit:
    """Valid rows usable for a set of target keys: ``train`` and ``held_out`` (sorted row ids)."""

    train: np.ndarray
    held_out: np.ndarray


def split_rows(store: FeatureStore, keys: list[str], held_out: int, manifest: Manifest | None = None) -> RowSplit:
    """Valid rows of tars complete for every key; the last ``held_out`` images of them (all their
    rows: an image's crops never straddle the split) are reserved for evaluation and never
    trained on. Columnar: no Python object per row."""
    complete = np.ones(len(store.plan.tars), dtype=bool)
    for key in keys:
        complete &= store.completed(key)
    if manifest is not None:
        valid = np.asarray(manifest.columns["valid"])
        usable = np.flatnonzero(valid & complete[manifest.tar_of(np.arange(len(valid)))]).astype(np.int64)
    else:
        parts = []
        for t, table in store.manifest_tables(["row", "valid"], complete).items():  # a complete tar must have one
            if complete[t]:
                parts.append(table.column("row").to_numpy()[table.column("valid").to_numpy(zero_copy_only=False)])
        usable = np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
    # By image: the last `held_out` images, each with all its crops_per_image rows.
    images = store.plan.image_rows(usable)
    first = np.flatnonzero(np.concatenate([[True], images[1:] != images[:-1]])) if len(usable) else usable
    cut = int(first[len(first) - held_out]) if 0 < held_out <= len(first) else (0 if held_out else len(usable))
    return RowSplit(usable[:cut], usable[cut:])
