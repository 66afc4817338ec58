"""Training data: store rows → (student image at the partition resolution, cached targets).

Everything about "what image, what crop, what target does row i mean" comes from the store
(manifest + arrays); this module only resizes the recorded crop to the stage resolution.

Batches are a pure function of ``(seed, partition, step)``: a resumed run draws the same rows in
the same order, and each DDP rank takes its contiguous slice of the global batch.

The read path: the sampler yields a rank's whole batch slice, the dataset's ``__getitems__``
reads it at once — the images through cached tar handles and the columnar
:class:`~radio.store.manifest.Manifest`, the targets with one concurrent tensorstore batch
(:class:`~radio.store.targets.TargetReader`) — and returns the collated batch with targets in
the store's dtype; :func:`on_device` converts them once they are on the device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from radio.errors import RadioError
from radio.shards.crops import CropBox, margin_view
from radio.shards.images import ImageLimits, decode_image
from radio.shards.tar import ShardError, TarFiles
from radio.store.layout import FeatureStore
from radio.store.manifest import Manifest
from radio.store.targets import TargetReader

from .loss import KeyTarget
from .shift import ShiftPlan, apply_windows, draw_offsets, shift_plan

Sampling = Literal["rows", "blocks"]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on ``uint64`` arrays: a bijective bit mixer (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def crop_choice(seed: int, epoch: int, images: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """``[n]`` which of each image's ``crops [n]`` rows an epoch visits: a pure function of
    (seed, epoch, image id), whatever else is in the batch or the run (so resume is exact)."""
    base = np.random.SeedSequence([seed, epoch, 23]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(images, dtype=np.int64).astype(np.uint64) ^ base)
    return (h % np.asarray(crops, dtype=np.uint64)).astype(np.int64)


class EpochOrder:
    """The order rows are visited in, one seeded permutation per epoch, computed once per epoch
    (at 100M rows a permutation takes seconds; a step only slices it).

    ``images`` (``[N]``, parallel to ``rows``): the image id of each row (its first row, see
    :meth:`radio.store.layout.Plan.image_rows`). A store with ``crops_per_image`` K has K rows per
    image; each epoch visits each image once, through one of its rows chosen by
    :func:`crop_choice` (RADIO redraws the crop at every visit; this is its cached form). None:
    every row is its own image.

    ``rows``: every step draws ``batch_size`` rows of the epoch's permutation.
    ``blocks``: the permutation is over Zarr shards (``shard_rows`` consecutive row ids); a step
    takes the rows of the next few shards, so its reads are contiguous. Each epoch still visits
    every training image once; what is lost is mixing within a batch (see README).
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        seed: int,
        partition: int,
        sampling: Sampling = "rows",
        shard_rows: int = 1,
        images: np.ndarray | None = None,
    ):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size, self.seed, self.partition = batch_size, seed, partition
        self.sampling, self.shard_rows = sampling, shard_rows
        self._groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # image id, first index, crops
        if images is not None and len(self.rows):
            images = np.asarray(images, dtype=np.int64)
            order = np.lexsort((self.rows, images))  # by image, then row: crop k is the k-th row
            ids, first, counts = np.unique(images[order], return_index=True, return_counts=True)
            if counts.max() > 1:  # else every row is one image: today's order exactly
                self.rows = self.rows[order]
                self._groups = (ids, first, counts)
        self.images = len(self._groups[0]) if self._groups is not None else len(self.rows)
        self.per_epoch = self.images // batch_size
        if self.per_epoch == 0:
            what = "training images" if self._groups is not None else "training rows"
            raise ValueError(f"batch size {batch_size} exceeds the {self.images} {what}")
        self._epoch, self._perm, self._rows = -1, np.zeros(0, np.int64), self.rows

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """``[images]`` the rows epoch ``epoch`` visits, one per image, in row order."""
        if self._groups is None:
            return self.rows
        ids, first, counts = self._groups
        return self.rows[first + crop_choice(self.seed, epoch, ids, counts)]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._rows = rows = self.epoch_rows(epoch)
            rng = np.random.default_rng([self.seed, self.partition, epoch])
            if self.sampling == "rows":
                self._perm = rng.permutation(len(rows))
            else:
                shard = rows // self.shard_rows
                block_start = np.flatnonzero(np.concatenate([[True], shard[1:] != shard[:-1]]))
                block_len = np.diff(np.concatenate([block_start, [len(rows)]]))
                order = rng.permutation(len(block_start))
                lengths = block_len[order]
                first = np.repeat(block_start[order] - (np.cumsum(lengths) - lengths), lengths)
                self._perm = first + np.arange(len(rows))
            self._epoch = epoch
        return self._perm

    def batch(self, step: int) -> np.ndarray:
        """Row ids of the global batch at ``step`` (the last incomplete batch of an epoch is dropped)."""
        epoch, pos = divmod(step, self.per_epoch)
        perm = self._permutation(epoch)
        return self._rows[perm[pos * self.batch_size : (pos + 1) * self.batch_size]]


def global_batch(
    rows: np.ndarray,
    batch_size: int,
    seed: int,
    partition: int,
    step: int,
    sampling: Sampling = "rows",
    shard_rows: int = 1,
    images: np.ndarray | None = None,
) -> np.ndarray:
    """Row ids of the global batch at ``step`` (one-off; loops use :class:`EpochOrder`)."""
    return EpochOrder(rows, batch_size, seed, partition, sampling, shard_rows, images).batch(step)


def flips_for(rows: np.ndarray, seed: int, partition: int, step: int) -> np.ndarray:
    """Horizontal-flip decisions for a global batch, seeded by the step (same on every rank)."""
    return np.random.default_rng([seed, partition, step, 1]).random(len(rows)) < 0.5


def on_device(batch: dict, device: torch.device | str) -> dict:
    """Move a batch to ``device``, then turn fp16 targets into float32 there: the one place
    targets leave the store's dtype. Compact keys' one-byte values stay as they are; the trainer
    decodes them next, on the device (:func:`radio.store.compact_decode.decode_targets`)."""

    def convert(v: torch.Tensor) -> torch.Tensor:
        v = v.to(device, non_blocking=True)
        return v if v.element_size() == 1 else v.float()

    return {
        "image": batch["image"].to(device, non_blocking=True),
        "row": batch["row"],
        "targets": {k: {n: convert(v) for n, v in t.items()} for k, t in batch["targets"].items()},
    }


class PartitionRows(Dataset):
    """``dataset.__getitems__([(row, flip), ...])`` → a batch ``{"image": [B, 3, r, r] float in
    [0, 1], "row": [B], "targets": {key: {"features": [B, h, w, C], "summary": [B, Cs]}}}`` with
    targets in the store's dtype. ``dataset[(row, flip)]`` is one sample of it (no batch axis,
    float32 targets).

    ``manifest``: a folder saved by :meth:`Manifest.save` (memory-mapped in each worker), a
    :class:`Manifest`, or None to build one from the store on first use. Opens everything
    lazily, so each DataLoader worker has its own tensorstore handles and tar files.
    """

    def __init__(
        self,
        store_path: str,
        resolution: int,
        targets: Sequence[KeyTarget],
        limits: ImageLimits = ImageLimits(),
        manifest: str | Path | Manifest | None = None,
        compact: frozenset[str] = frozenset(),
        shift: ShiftPlan | None = None,
    ):
        self.store_path = store_path
        # Keys with a cached shift margin are windowed (at offset 0 without a shift plan).
        self.shift = shift or shift_plan(resolution, targets, False, 0.5)
        self.resolution = resolution
        self.targets = targets
        self.limits = limits
        self._manifest = manifest if isinstance(manifest, Manifest) else None
        self._manifest_dir = None if isinstance(manifest, Manifest) or manifest is None else Path(manifest)
        self.reader = TargetReader(store_path, [(t.key, t.summary) for t in targets], compact)
        self.tars = TarFiles()

    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = (
                Manifest.load(self._manifest_dir)
                if self._manifest_dir is not None
                else Manifest.build(FeatureStore(self.store_path))
            )
        return self._manifest

    def __getstate__(self) -> dict:  # a saved manifest travels to spawned workers as its path
        state = self.__dict__.copy()
        if self._manifest_dir is not None:
            state["_manifest"] = None
        return state

    def image(self, row: int) -> np.ndarray:
        """The row's recorded crop, resized to the partition resolution: ``[r, r, 3] uint8``
        (with a shift plan, extended by its ``pad`` px per side: the view windows are taken of)."""
        m = self.manifest()
        c = m.columns
        path = m.tar_paths[int(m.tar_of(np.array([row]))[0])]
        offset = int(c["offset"][row])
        decoded = decode_image(self.tars.read(path, offset, int(c["size"][row])), self.limits)
        if decoded.pixels is None:
            raise ShardError(f"{path}: image at offset {offset} is {decoded.reason}")
        box = CropBox(int(c["crop_x"][row]), int(c["crop_y"][row]), int(c["crop_w"][row]), int(c["crop_h"][row]))
        return margin_view(decoded.pixels, box, self.resolution, self.shift.pad if self.shift else 0)

    def __getitems__(self, items: Sequence[tuple[int, ...]]) -> dict:
        """``items``: ``(row, flip)``, or ``(row, flip, ky, kx)`` with a shift offset (StepBatches)."""
        rows = np.array([int(it[0]) for it in items], dtype=np.int64)
        flips = torch.tensor([bool(it[1]) for it in items])
        images = torch.from_numpy(np.stack([self.image(int(r)) for r in rows])).permute(0, 3, 1, 2)
        images = images.float().div_(255.0)
        targets = {}
        for key, arrays in self.reader.read(rows).items():
            targets[key] = {n: torch.from_numpy(a) for n, a in arrays.items()}
            if flips.any():  # [B, h, w, C]: mirror the grid with the image
                f = targets[key]["features"]
                f[flips] = f[flips].flip(2)
        if flips.any():
            images[flips] = images[flips].flip(3)
        if self.shift is not None:  # windows of the flipped view and grids (distill/shift.py)
            offsets = np.array([it[2:4] if len(it) > 2 else (0, 0) for it in items], dtype=np.int64).reshape(-1, 2)
            images, targets = apply_windows(images, targets, offsets, self.shift)
        return {"image": images, "row": torch.from_numpy(rows), "targets": targets}

    def __getitem__(self, item: tuple[int, bool]) -> dict:
        """One sample, targets as float32 (for evaluation and tools; training reads batches)."""
        batch = on_device(self.__getitems__([item]), "cpu")
        return {
            "image": batch["image"][0],
            "row": int(batch["row"][0]),
            "targets": {k: {n: v[0] for n, v in t.items()} for k, t in batch["targets"].items()},
        }

    def __len__(self) -> int:  # only for tools that ask; batches come from StepBatches
        return len(self.manifest())


def collate(samples: list[dict] | dict) -> dict:
    """Stack samples into a batch with the same nesting (a batch from ``__getitems__`` passes
    through unchanged)."""
    if isinstance(samples, dict):
        return samples
    keys = samples[0]["targets"].keys()
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "row": torch.tensor([s["row"] for s in samples]),
        "targets": {
            k: {n: torch.stack([s["targets"][k][n] for s in samples]) for n in samples[0]["targets"][k]} for k in keys
        },
    }


class WorkerEnvironment:
    """A DataLoader ``worker_init_fn`` that gives each worker the trainer's environment as it was
    when the loader was made. Workers come from a forkserver, which keeps the environment of the
    moment it started (the process's first loader): variables set later, such as the ``AWS_*``
    credentials a store or the shards on S3 need, would otherwise be missing in the workers."""

    def __init__(self) -> None:
        self.env = dict(os.environ)

    def __call__(self, worker_id: int) -> None:
        os.environ.update(self.env)


def next_batch(loader: Iterator[dict]) -> dict:
    """``next(loader)``. A :class:`~radio.errors.RadioError` raised in a DataLoader worker (a damaged
    or missing target) comes back from torch with the worker's traceback as its message; it is
    raised again as its own one line, so the CLI prints one ``error:`` line."""
    try:
        return next(loader)
    except RadioError as e:
        text = str(e).rstrip()
        if "\nOriginal Traceback" not in text:
            raise
        last = text.splitlines()[-1]  # "radio.store.checksums.CorruptError: the message"
        head, _, message = last.partition(": ")
        raise type(e)(message if head.endswith(type(e).__name__) else last) from None


class StepBatches:
    """Batch sampler for a DataLoader: this rank's ``(row, flip)`` items for steps ``start..stop-1``
    (``images``: each row's image id, see :class:`EpochOrder`)."""

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        seed: int,
        partition: int,
        start: int,
        stop: int,
        rank: int = 0,
        world: int = 1,
        flip: bool = False,
        sampling: Sampling = "rows",
        shard_rows: int = 1,
        images: np.ndarray | None = None,
        shift: ShiftPlan | None = None,
    ):
        if batch_size % world:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world} ranks")
        self.order = EpochOrder(rows, batch_size, seed, partition, sampling, shard_rows, images)  # fails early
        self.batch_size, self.seed, self.partition = batch_size, seed, partition
        self.start, self.stop, self.rank, self.world, self.flip = start, stop, rank, world, flip
        self.shift = shift if shift is not None and shift.limit else None

    def __iter__(self) -> Iterator[list[tuple]]:
        local = self.batch_size // self.world
        for step in range(self.start, self.stop):
            rows = self.order.batch(step)
            flips = flips_for(rows, self.seed, self.partition, step) if self.flip else np.zeros(len(rows), bool)
            sl = slice(self.rank * local, (self.rank + 1) * local)
            if self.shift is None:
                yield list(zip(rows[sl].tolist(), flips[sl].tolist()))
                continue
            k, _ = draw_offsets(self.seed, self.partition, step, rows[sl], self.shift.sigma, self.shift.limit)
            yield list(zip(rows[sl].tolist(), flips[sl].tolist(), k[:, 0].tolist(), k[:, 1].tolist()))

    def __len__(self) -> int:
        return self.stop - self.start
