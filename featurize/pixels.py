"""Featurize's side of student pixels (``featurize.student_pixels``): plan them, write them.

:class:`PixelWriter` is what the CPU stage (:mod:`radio.featurize.decode`) calls with the images
it has already decoded; :func:`add_pixels` does the same for tars whose targets are complete
already (`radio store add-pixels`, or a featurize run whose config turned pixels on later): it
reads each row's recorded box from the manifest and decodes the image from its tar, without
running a teacher. Both write whole shards of :func:`radio.shards.views.student_view` output,
then the tar's marker, so either path (and a resumed run) stores the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from radio.shards.crops import CropBox
from radio.shards.images import ImageLimits, decode_image
from radio.shards.tar import ShardError, TarFiles
from radio.shards.views import student_view
from radio.store import pixels
from radio.store.errors import StoreError
from radio.store.layout import FeatureStore


def partition_resolutions(stages: Sequence) -> list[int]:
    """Every partition resolution of the pipeline's stages (``config.stages``), ascending."""
    return sorted({r for s in stages for p in s.partitions for r in p.sizes})


def plan_pixels(
    store: FeatureStore, mode: str, quality: int, resolutions: Sequence[int], overwrite: bool = False
) -> list[pixels.PixelSpec]:
    """Pre-allocate ``pixels/R`` for each resolution (driver only); ``mode`` ``none`` plans nothing."""
    if mode == "none":
        return []
    specs = [pixels.PixelSpec(mode, r, quality if mode == "jpeg" else None) for r in resolutions]
    for spec in specs:
        pixels.create_pixels(store, spec, overwrite)
    return specs


class PixelWriter:
    """Writes the student views of the rows one worker decodes, for every resolution the store
    holds pixels at (read once per worker from the store's groups)."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self.specs = {r: pixels.pixel_spec(store, r) for r in pixels.pixel_resolutions(store)}

    def todo(self, tar_index: int) -> tuple[int, ...]:
        """The resolutions whose pixels tar ``tar_index`` lacks (its marker is not written)."""
        return tuple(r for r in self.specs if not pixels.pixels_completed(self.store, r)[tar_index])

    def write(
        self,
        row_start: int,
        windows: int,
        rows: Sequence[tuple[np.ndarray | None, CropBox | None]],
        resolutions: Sequence[int],
    ) -> None:
        """``rows`` (decoded image ``[H, W, 3]`` and box, or None for an invalid row) from
        ``row_start``: ``windows`` whole shards of every resolution (padding rows zero)."""
        n = windows * self.store.plan.shard_rows
        valid = np.zeros(n, bool)
        for i, (image, box) in enumerate(rows):
            valid[i] = image is not None and box is not None
        for r in resolutions:
            views = np.zeros((n, r, r, 3), np.uint8)
            for i, (image, box) in enumerate(rows):
                if valid[i]:
                    assert image is not None and box is not None  # valid
                    views[i] = student_view(image, box, r)
            encoded = pixels.encode_rows(self.specs[r], views, valid)
            s = self.store.plan.shard_rows
            for w in range(windows):  # whole shards only
                pixels.write_pixel_shard(self.store, r, row_start + w * s, encoded[w * s : (w + 1) * s])

    def complete(self, tar_index: int, resolutions: Sequence[int]) -> None:
        for r in resolutions:
            pixels.mark_pixels_complete(self.store, r, tar_index)


@dataclass
class AddPixelsReport:
    """What :func:`add_pixels` did: tars written, tars already complete, tars without a manifest
    (never featurized: featurize's CPU stage writes their pixels), per resolution."""

    written: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, int] = field(default_factory=dict)
    no_manifest: list[int] = field(default_factory=list)
    rows: int = 0


MANIFEST_COLUMNS = ["row", "valid", "tar", "offset", "size", "crop_x", "crop_y", "crop_w", "crop_h"]


def add_pixels(
    store: FeatureStore,
    resolutions: Sequence[int] | None = None,
    on_tar: Callable[[int, int], None] | None = None,
) -> AddPixelsReport:
    """Write the student pixels every tar with a manifest lacks at ``resolutions`` (default: all
    the store holds), without teachers; resumable: a tar whose marker is written is skipped, and
    a killed run's half-written tar is rewritten whole. ``on_tar(done, total)`` reports progress."""
    writer = PixelWriter(store)
    res = sorted(writer.specs) if resolutions is None else list(resolutions)
    missing = [r for r in res if r not in writer.specs]
    if missing:
        have = ", ".join(map(str, sorted(writer.specs))) or "none"
        raise StoreError(
            f"{store.path}: no student pixels planned at {', '.join(map(str, missing))} px (planned: {have})"
        )
    report = AddPixelsReport({r: 0 for r in res}, {r: 0 for r in res})
    if not res:
        return report
    tables = store.manifest_tables(MANIFEST_COLUMNS, required=np.zeros(len(store.plan.tars), bool))
    limits = ImageLimits(
        int(store.settings.get("min_image_size", ImageLimits().min_size)),
        int(store.settings.get("max_image_pixels", ImageLimits().max_pixels)),
    )
    tars, r_shard = TarFiles(), store.plan.shard_rows
    done = {r: pixels.pixels_completed(store, r) for r in res}
    for n, tp in enumerate(store.plan.tars):
        todo = [r for r in res if not done[r][tp.index]]
        for r in res:
            if r not in todo:
                report.skipped[r] += 1
        if todo and tp.index not in tables:
            report.no_manifest.append(tp.index)
        elif todo:
            rows = _decoded_rows(tables[tp.index].to_pydict(), tp.row_start, tp.rows, tars, limits)
            writer.write(tp.row_start, tp.rows // r_shard, rows, todo)
            writer.complete(tp.index, todo)
            for r in todo:
                report.written[r] += 1
            report.rows += sum(1 for image, _ in rows if image is not None)
        if on_tar:
            on_tar(n + 1, len(store.plan.tars))
    return report


def _decoded_rows(
    m: dict[str, list], row_start: int, n: int, tars: TarFiles, limits: ImageLimits
) -> list[tuple[np.ndarray | None, CropBox | None]]:
    """The tar's ``n`` rows from ``row_start``: (decoded image, recorded box), None for invalid and
    padding rows; each image decoded once for its K crops."""
    out: list[tuple[np.ndarray | None, CropBox | None]] = [(None, None)] * n
    cache: tuple[int, np.ndarray] | None = None
    for i, row in enumerate(m["row"]):
        if not m["valid"][i]:
            continue
        offset = int(m["offset"][i])
        if cache is None or cache[0] != offset:
            decoded = decode_image(tars.read(m["tar"][i], offset, int(m["size"][i])), limits)
            if decoded.pixels is None:
                raise ShardError(f"{m['tar'][i]}: image at offset {offset} is {decoded.reason}")
            cache = (offset, decoded.pixels)
        box = CropBox(int(m["crop_x"][i]), int(m["crop_y"][i]), int(m["crop_w"][i]), int(m["crop_h"][i]))
        out[int(row) - row_start] = (cache[1], box)
    return out


__all__ = ["AddPixelsReport", "PixelWriter", "add_pixels", "partition_resolutions", "plan_pixels"]
