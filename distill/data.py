"""Training data: store rows → (student image at the partition resolution, cached targets).

Everything about "what image, what crop, what target does row i mean" comes from the store
(manifest + arrays); this module only resizes the recorded crop to the stage resolution.

Batches are a pure function of ``(seed, partition, step)``: a resumed run draws the same rows in
the same order, and each DDP rank takes its contiguous slice of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from radio.store.crops import CropBox, crop_resize
from radio.store.images import ImageLimits
from radio.store.layout import FeatureStore
from radio.store.shards import read_image

from .loss import KeyTarget


@dataclass(frozen=True)
class RowSplit:
    """Valid rows usable for a set of target keys: ``train`` and ``held_out`` (sorted row ids)."""

    train: np.ndarray
    held_out: np.ndarray


def split_rows(store: FeatureStore, keys: list[str], held_out: int) -> RowSplit:
    """Valid rows of tars complete for every key; the last ``held_out`` of them are reserved
    for evaluation and never trained on."""
    manifest = store.manifest()
    rows = np.asarray(manifest.column("row").to_pylist(), dtype=np.int64)
    valid = np.asarray(manifest.column("valid").to_pylist(), dtype=bool)
    tar = np.asarray(manifest.column("tar_index").to_pylist(), dtype=np.int64)
    complete = np.ones(len(store.plan.tars), dtype=bool)
    for key in keys:
        complete &= store.completed(key)
    usable = np.sort(rows[valid & complete[tar]]) if len(rows) else rows
    cut = max(0, len(usable) - held_out)
    return RowSplit(usable[:cut], usable[cut:])


def global_batch(rows: np.ndarray, batch_size: int, seed: int, partition: int, step: int) -> np.ndarray:
    """Row ids of the global batch at ``step``: epochs are seeded permutations, the last
    incomplete batch of an epoch is dropped so every batch has ``batch_size`` rows."""
    per_epoch = len(rows) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(rows)} training rows")
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, partition, epoch]).permutation(len(rows))
    return rows[perm[pos * batch_size : (pos + 1) * batch_size]]


def flips_for(rows: np.ndarray, seed: int, partition: int, step: int) -> np.ndarray:
    """Horizontal-flip decisions for a global batch, seeded by the step (same on every rank)."""
    return np.random.default_rng([seed, partition, step, 1]).random(len(rows)) < 0.5


class PartitionRows(Dataset[dict[str, Any]]):
    """``dataset[(row, flip)]`` → ``{"image": [3, r, r] float in [0, 1], "row": int,
    "targets": {key: {"features": [h, w, C] float32, "summary": [Cs] float32}}}``.

    Opens the store lazily, so each DataLoader worker (forked) has its own Zarr handles.
    """

    def __init__(self, store_path: str, resolution: int, targets: Sequence[KeyTarget], limits: ImageLimits = ImageLimits()):
        self.store_path = store_path
        self.resolution = resolution
        self.targets = targets
        self.limits = limits
        self._manifest: dict[int, dict] | None = None
        self._arrays: dict[tuple[str, str], Any] = {}  # zarr.Array: its [] is typed as scalar | array

    def _open(self) -> dict[int, dict]:
        """The manifest by row; opens the arrays once (opening reads metadata files)."""
        if self._manifest is None:
            store = FeatureStore(self.store_path)
            self._manifest = {r["row"]: r for r in store.manifest().to_pylist()}
            for t in self.targets:
                for name in ("features", "summary") if t.summary else ("features",):
                    self._arrays[(t.key, name)] = store.array(t.key, name)
        return self._manifest

    def image(self, row: int) -> np.ndarray:
        """The row's recorded crop, resized to the partition resolution: ``[r, r, 3] uint8``."""
        m = self._open()[row]
        pixels = read_image(m["tar"], m["offset"], m["size"], self.limits)
        return crop_resize(pixels, CropBox(m["crop_x"], m["crop_y"], m["crop_size"]), self.resolution)

    def __getitem__(self, item: tuple[int, bool]) -> dict[str, Any]:
        row, flip = int(item[0]), bool(item[1])
        image = torch.from_numpy(self.image(row).copy()).permute(2, 0, 1).float().div_(255.0)
        targets = {}
        for t in self.targets:
            feats = torch.from_numpy(self._arrays[(t.key, "features")][row].astype(np.float32))
            summary = torch.from_numpy(self._arrays[(t.key, "summary")][row].astype(np.float32)) if t.summary else None
            if flip:
                feats = feats.flip(1)  # [h, w, C]: mirror the grid with the image
            targets[t.key] = {"features": feats} | ({"summary": summary} if summary is not None else {})
        if flip:
            image = image.flip(2)
        return {"image": image, "row": row, "targets": targets}

    def __len__(self) -> int:  # only for tools that ask; batches come from StepBatches
        return len(self._open())


def collate(samples: list[dict]) -> dict:
    """Stack a list of samples into a batch with the same nesting."""
    keys = samples[0]["targets"].keys()
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "row": torch.tensor([s["row"] for s in samples]),
        "targets": {k: {n: torch.stack([s["targets"][k][n] for s in samples]) for n in samples[0]["targets"][k]}
                    for k in keys},  # fmt: skip
    }


class StepBatches:
    """Batch sampler for a DataLoader: this rank's ``(row, flip)`` items for steps ``start..stop-1``."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int, partition: int, start: int, stop: int,
                 rank: int = 0, world: int = 1, flip: bool = False):  # fmt: skip
        if batch_size % world:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world} ranks")
        global_batch(rows, batch_size, seed, partition, 0)  # fail early if the batch cannot be drawn
        self.rows, self.batch_size, self.seed, self.partition = rows, batch_size, seed, partition
        self.start, self.stop, self.rank, self.world, self.flip = start, stop, rank, world, flip

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        local = self.batch_size // self.world
        for step in range(self.start, self.stop):
            rows = global_batch(self.rows, self.batch_size, self.seed, self.partition, step)
            flips = flips_for(rows, self.seed, self.partition, step) if self.flip else np.zeros(len(rows), bool)
            sl = slice(self.rank * local, (self.rank + 1) * local)
            yield list(zip(rows[sl].tolist(), flips[sl].tolist()))

    def __len__(self) -> int:
        return self.stop - self.start
