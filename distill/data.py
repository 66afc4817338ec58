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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from radio.errors import RadioError
from radio.shards.crops import CropBox
from radio.shards.images import ImageLimits, decode_image
from radio.shards.tar import ShardError, TarFiles
from radio.shards.views import student_view
from radio.store.layout import FeatureStore
from radio.store.manifest import Manifest
from radio.store.pixels import StoredPixels
from radio.store.targets import TargetReader

from .counters import splitmix64
from .loss import KeyTarget, keys_at
from .pixels import decode_views
from .shift import ShiftPlan, apply_windows, by_size, draw_offsets, shift_plan

Sampling = Literal["rows", "blocks"]


def crop_choice(seed: int, epoch: int, images: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """``[n]`` which of each image's ``crops [n]`` rows an epoch visits: a pure function of
    (seed, epoch, image id), whatever else is in the batch or the run (so resume is exact)."""
    base = np.random.SeedSequence([seed, epoch, 23]).generate_state(1, np.uint64)[0]
    h = splitmix64(np.asarray(images, dtype=np.int64).astype(np.uint64) ^ base)
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

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows at positions ``start..stop-1`` of the endless stream of epochs (each epoch one row
        per image, in its permutation): a token budget's batches vary in size and may straddle
        an epoch's end (:mod:`radio.distill.resolutions`)."""
        out, pos = [np.zeros(0, np.int64)], start
        while pos < stop:
            epoch, i = divmod(pos, self.images)
            n = min(stop - pos, self.images - i)
            out.append(self._rows[self._permutation(epoch)[i : i + n]])
            pos += n
        return np.concatenate(out)


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
        "image": batch["image"].to(device, non_blocking=True) if "jpeg" not in batch else device_images(batch, device),
        "row": batch["row"],
        "targets": {k: {n: convert(v) for n, v in t.items()} for k, t in batch["targets"].items()},
    }


def device_images(batch: dict, device: torch.device | str) -> torch.Tensor:
    """A batch's stored JPEG views (``batch["jpeg"]``: one 1-D uint8 tensor per row, from
    :class:`PartitionRows` with ``device_jpeg``) → ``[B, 3, r, r]`` float in [0, 1] on ``device``,
    decoded there in one batched call (nvJPEG on CUDA) and flipped where ``batch["flips"]`` says:
    the bytes cross to the GPU, not the pixels, and no loader core decodes them."""
    images = decode_views(batch["jpeg"], device).float().div_(255.0)
    flips = batch["flips"].to(images.device)
    if bool(batch["flips"].any()):  # (a host tensor: no sync)
        images[flips] = images[flips].flip(3)
    return images


class PartitionRows(Dataset):
    """``dataset.__getitems__([(row, flip), ...])`` → a batch ``{"image": [B, 3, r, r] float in
    [0, 1], "row": [B], "targets": {key: {"features": [B, h, w, C], "summary": [B, Cs]}}}`` with
    targets in the store's dtype. ``dataset[(row, flip)]`` is one sample of it (no batch axis,
    float32 targets).

    ``manifest``: a folder saved by :meth:`Manifest.save` (memory-mapped in each worker), a
    :class:`Manifest`, or None to build one from the store on first use. Opens everything
    lazily, so each DataLoader worker has its own tensorstore handles and tar files.

    ``stored_pixels``: read the student view of rows whose tar has stored pixels at this
    resolution from the store (:mod:`radio.distill.pixels`); other rows, or all with False, are
    decoded from their tars. ``device_jpeg`` (the trainer on CUDA): a batch whose rows all have
    stored JPEG views carries their bytes (``"jpeg"``, ``"flips"``) instead of ``"image"``, and
    :func:`on_device` decodes them on the device in one call.
    """

    def __init__(
        self,
        store_path: str,
        resolution: int,
        targets: Sequence[KeyTarget],
        limits: ImageLimits = ImageLimits(),
        manifest: str | Path | Manifest | None = None,
        compact: frozenset[str] = frozenset(),
        stored_pixels: bool = True,
        shift: ShiftPlan | Mapping[int, ShiftPlan | None] | None = None,
        device_jpeg: bool = False,
    ):
        self.store_path = store_path
        self.resolution = resolution
        self.targets = targets
        # The shift plan per input size (one, or a stochastic partition's each); keys with a cached
        # margin are windowed at offset 0 where no plan shifts.
        self.shifts = by_size(shift)
        self.limits = limits
        self._manifest = manifest if isinstance(manifest, Manifest) else None
        self._manifest_dir = None if isinstance(manifest, Manifest) or manifest is None else Path(manifest)
        self.reader = TargetReader(store_path, [(t.key, t.summary) for t in targets], compact)
        self.tars = TarFiles()
        self.stored_pixels = stored_pixels
        self.device_jpeg = device_jpeg
        self._pixels: dict[int, StoredPixels | None] = {}

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

    def image(self, row: int, resolution: int | None = None, pad: int = 0) -> np.ndarray:
        """The row's recorded crop, resized to ``resolution`` (default: the partition's):
        ``[r, r, 3] uint8``; extended by ``pad`` px per side (a shift plan's: the view its
        windows are cut from), ``[r + 2·pad, r + 2·pad, 3]``."""
        m = self.manifest()
        c = m.columns
        path = m.tar_paths[int(m.tar_of(np.array([row]))[0])]
        offset = int(c["offset"][row])
        decoded = decode_image(self.tars.read(path, offset, int(c["size"][row])), self.limits)
        if decoded.pixels is None:
            raise ShardError(f"{path}: image at offset {offset} is {decoded.reason}")
        box = CropBox(int(c["crop_x"][row]), int(c["crop_y"][row]), int(c["crop_w"][row]), int(c["crop_h"][row]))
        return student_view(decoded.pixels, box, resolution or self.resolution, pad)

    def shift_at(self, size: int | None = None) -> ShiftPlan | None:
        """The shift plan at input ``size`` (default: the partition's resolution)."""
        size = size or self.resolution
        if size not in self.shifts:
            self.shifts[size] = shift_plan(size, keys_at(self.targets, size), False, 0.5)
        return self.shifts[size]

    @property
    def shift(self) -> ShiftPlan | None:
        """The shift plan at the partition's resolution."""
        return self.shift_at()

    def stored_at(self, resolution: int) -> StoredPixels | None:
        """The store's pixels at ``resolution`` (None: none there, or ``stored_pixels`` False);
        opened once per size (a stochastic partition reads several)."""
        if not self.stored_pixels:
            return None
        if resolution not in self._pixels:
            self._pixels[resolution] = StoredPixels.open(FeatureStore(self.store_path), resolution)
        return self._pixels[resolution]

    @property
    def pixels(self) -> StoredPixels | None:
        """The stored pixels at the partition's resolution."""
        return self.stored_at(self.resolution)

    def images(self, rows: np.ndarray, resolution: int | None = None, pad: int = 0) -> torch.Tensor:
        """``[B, 3, r + 2·pad, r + 2·pad] uint8`` at ``resolution`` (default: the partition's):
        stored views where the row's tar has them, else :meth:`image`. Stored views hold the box
        alone, so a shift's extended view (``pad`` > 0) is decoded from the tar."""
        r = resolution or self.resolution
        pixels = self.stored_at(r) if pad == 0 else None
        side = r + 2 * pad
        out = torch.empty((len(rows), 3, side, side), dtype=torch.uint8)
        stored = np.zeros(len(rows), bool)
        if pixels is not None and len(rows):
            stored = pixels.complete[self.manifest().tar_of(rows)]
            idx = np.flatnonzero(stored)
            if len(idx) == len(rows):  # straight into the batch
                views = pixels.read(rows, out=out.numpy())
                if not isinstance(views, np.ndarray):
                    decode_views(views, out=out)
            elif len(idx):
                views = pixels.read(rows[idx])
                out[idx] = torch.from_numpy(views) if isinstance(views, np.ndarray) else decode_views(views)
        for i in np.flatnonzero(~stored):
            view = self.image(int(rows[i]), r, pad)
            out[i] = torch.from_numpy(np.require(view, requirements="W")).permute(2, 0, 1)
        return out

    def __getitems__(self, items: Sequence[tuple]) -> dict:
        """``items`` (:class:`StepBatches`): ``(row, flip)``; ``(row, flip, size)`` where the
        step's size was drawn (stochastic resolutions: one size per batch); ``(row, flip, ky, kx)``
        with a shift offset; ``(row, flip, size, ky, kx)`` with both."""
        rows = np.array([int(it[0]) for it in items], dtype=np.int64)
        flips = torch.tensor([bool(it[1]) for it in items])
        width = len(items[0])
        size = int(items[0][2]) if width in (3, 5) else None
        plan = self.shift_at(size)
        pad = plan.pad if plan is not None else 0
        blobs = self._device_views(rows, size or self.resolution) if pad == 0 else None
        images = self.images(rows, size, pad).float().div_(255.0) if blobs is None else torch.empty(0)
        targets = {}
        for key, arrays in self.reader.read(rows).items():
            targets[key] = {n: torch.from_numpy(a) for n, a in arrays.items()}
            if flips.any():  # [B, h, w, C]: mirror the grid with the image
                f = targets[key]["features"]
                f[flips] = f[flips].flip(2)
        if flips.any() and blobs is None:
            images[flips] = images[flips].flip(3)
        if plan is not None:  # windows of the flipped view and grids (distill/shift.py)
            offsets = np.array([it[-2:] if width >= 4 else (0, 0) for it in items], dtype=np.int64).reshape(-1, 2)
            images, targets = apply_windows(images, targets, offsets, plan)
        if blobs is not None:  # decoded on the training device (on_device)
            return {"jpeg": blobs, "flips": flips, "row": torch.from_numpy(rows), "targets": targets}
        return {"image": images, "row": torch.from_numpy(rows), "targets": targets}

    def _device_views(self, rows: np.ndarray, resolution: int) -> list[torch.Tensor] | None:
        """The rows' stored JPEG views, left for the device to decode (``device_jpeg``), when every
        row has one at ``resolution``; None: the batch's pixels are made here."""
        pixels = self.stored_at(resolution) if self.device_jpeg else None
        if pixels is None or pixels.spec.mode != "jpeg" or not len(rows):
            return None
        if not pixels.complete[self.manifest().tar_of(rows)].all():
            return None
        return [torch.from_numpy(np.ascontiguousarray(b)) for b in pixels.read(rows)]

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


class StepSizes(Protocol):
    """A partition's size and global batch per step (:class:`radio.distill.resolutions.SizeSchedule`)."""

    token_budget: bool
    batches: np.ndarray

    def size(self, step: int) -> int: ...
    def batch(self, step: int) -> int: ...
    def offset(self, step: int) -> int: ...


class StepBatches:
    """Batch sampler for a DataLoader: this rank's ``(row, flip)`` items for steps ``start..stop-1``
    (``images``: each row's image id, see :class:`EpochOrder`). With ``sizes`` (stochastic
    resolutions) the items are ``(row, flip, size)`` and, under a token budget, the step's batch
    is the next ``sizes.batch(step)`` rows of the epoch stream."""

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
        sizes: StepSizes | None = None,
        shift: ShiftPlan | Mapping[int, ShiftPlan | None] | None = None,
    ):
        budget = sizes is not None and sizes.token_budget
        if batch_size % world and not budget:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world} ranks")
        # a token budget reads the epoch stream by position (EpochOrder.span): batches of one
        self.order = EpochOrder(rows, 1 if budget else batch_size, seed, partition, sampling, shard_rows, images)
        if sizes is not None and budget and int(sizes.batches.max(initial=0)) > self.order.images:
            raise ValueError(f"batch size {int(sizes.batches.max())} exceeds the {self.order.images} training images")
        self.batch_size, self.seed, self.partition = batch_size, seed, partition
        self.start, self.stop, self.rank, self.world, self.flip = start, stop, rank, world, flip
        self.sizes, self.budget = sizes, budget
        self.shifts = by_size(shift)  # a stochastic partition's sizes may shift differently

    def size(self, step: int) -> int | None:
        """The input size drawn for 0-based ``step`` (None: the partition's one resolution)."""
        return self.sizes.size(step) if self.sizes is not None else None

    def plan(self, step: int) -> ShiftPlan | None:
        """The shift plan that moves 0-based ``step``'s views (None: no shift this step)."""
        size = self.size(step)
        plan = self.shifts.get(size) if size is not None else next(iter(self.shifts.values()), None)
        return plan if plan is not None and plan.limit else None

    def global_rows(self, step: int) -> np.ndarray:
        """``[B]`` every rank's rows of 0-based ``step`` (B: the step's global batch)."""
        if self.sizes is not None and self.budget:
            first = self.sizes.offset(step)
            return self.order.span(first, first + self.sizes.batch(step))
        return self.order.batch(step)

    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of a step's global ``rows`` (or of any array over them: flips)."""
        local = len(rows) // self.world
        return rows[self.rank * local : (self.rank + 1) * local]

    def __iter__(self) -> Iterator[list[tuple]]:
        for step in range(self.start, self.stop):
            rows = self.global_rows(step)
            flips = flips_for(rows, self.seed, self.partition, step) if self.flip else np.zeros(len(rows), bool)
            mine = self.local_rows(rows)
            items: list[tuple] = list(zip(mine.tolist(), self.local_rows(flips).tolist()))
            size, plan = self.size(step), self.plan(step)
            if size is not None:
                items = [(*it, size) for it in items]
            if plan is not None:
                k, _ = draw_offsets(self.seed, self.partition, step, mine, plan.sigma, plan.limit)
                items = [(*it, int(ky), int(kx)) for it, (ky, kx) in zip(items, k)]
            yield items

    def __len__(self) -> int:
        return self.stop - self.start
