"""The CPU stage of featurize: read a tar once, decode each image once, crop it
``crops_per_image`` times (K rows per image), resize each crop to every geometry the selected
target keys need, and write the tar's manifest once.

Its output is a stream of **groups**: ``W`` consecutive Zarr shards (windows of ``shard_rows``
rows) of one tar, with ``W * shard_rows ≈`` the teachers' batch size, so a group is the unit
that reaches a teacher (one forward per ``batch_size`` valid images). A group is one Ray Data
row of fixed-shape columns (a tar's last group is padded with invalid rows; the columns and
their records are :mod:`radio.featurize.records`'s):

    header   :class:`GroupHeader`: tar item, group index, first row, real windows, sample keys
    end      :class:`TarEnd` on the last group of a tar: the tar's totals (groups, samples,
             reasons, truncation, error)
    valid    [W * R] bool
    px{s}    [W * R, s, s, 3] uint8 for every resolution ``s`` a selected key needs (px{s}p{pad}:
             the crop extended by a key's shift margin, ``s + 2·pad`` px a side)

With student pixels in the store (``featurize.student_pixels``, :mod:`radio.store.pixels`), the
stage also writes each row's student view at every resolution the store holds pixels at, whole
shards per group, and marks the tar's pixels complete after its manifest.

Group composition depends only on the tar and the config, so teachers see the same batches in a
resumed run as in an uninterrupted one (bit-equal targets). The manifest is written before the
last group leaves, so it is durable before the driver writes any completion marker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from radio.shards.crops import CropBox, choose_crop, margin_view
from radio.shards.images import ImageLimits
from radio.shards.tar import Sample, ShardReader
from radio.store.layout import FeatureStore, TarPlan

from . import pixels as student_pixels
from .records import FeaturizeSettings, GroupHeader, TarEnd, TarItem, pixel_column, to_batch


def windows_per_group(batch_size: int, shard_rows: int) -> int:
    """Shards per group: enough whole shards to fill about one teacher batch."""
    return max(1, batch_size // shard_rows)


class TarDecoder:
    """Callable for Ray Data's ``map_batches`` (a generator: one input tar → its groups)."""

    def __init__(self, store_path: str, settings: FeaturizeSettings, batch_size: int):
        self.store = FeatureStore(store_path)
        self.settings = settings
        self.group = windows_per_group(batch_size, self.store.plan.shard_rows)
        self.crops = self.store.plan.crops_per_image  # K rows per image
        self.pixels = student_pixels.PixelWriter(self.store)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for s in batch["item"]:
            yield from self.groups(TarItem.decode(str(s)))

    def groups(self, item: TarItem) -> Iterator[dict[str, np.ndarray]]:
        """The tar's groups as single-row column batches; never raises (errors ride in the
        :class:`TarEnd` columns)."""
        tp = self.store.plan.tars[item.tar_index]
        r, w = self.store.plan.shard_rows, self.group
        res = item.views
        views = self.pixels.todo(tp.index)  # student-pixel resolutions this tar still lacks
        manifest: list[dict[str, Any]] = []
        reasons: Counter[str] = Counter()
        reader = ShardReader(tp.path, ImageLimits(self.settings.min_image_size, self.settings.max_image_pixels))
        index, pending, error = 0, None, None
        try:
            samples: list[tuple[Sample, int]] = []  # one (sample, crop index) per row
            for sample in reader:
                if sample.ordinal >= tp.samples:
                    raise RuntimeError(f"{tp.path} holds more samples than planned ({tp.samples}); was it rewritten?")
                reasons[sample.reason or "valid"] += 1
                for k in range(self.crops):  # decoded once, cropped K times
                    samples.append((sample, k))
                    if len(samples) == w * r:
                        if pending is not None:
                            yield pending
                        pending = self._group(item, tp, index, samples, res, manifest, views)
                        index, samples = index + 1, []
            if samples or pending is None:
                if pending is not None:
                    yield pending
                pending = self._group(item, tp, index, samples, res, manifest, views)
                index += 1
            self.store.write_manifest(tp.index, manifest)  # once per tar, before the last group leaves
            self.pixels.complete(tp.index, views)  # after the pixels' shards and the manifest
        except Exception as e:  # noqa: BLE001 - one bad tar must not stop the job
            error = f"{type(e).__name__}: {e}"
            if pending is None:
                pending = self._group(item, tp, index, [], res, [])
                index += 1
        end = TarEnd(
            index,
            len(manifest) // self.crops,  # samples (images), not rows
            reasons["valid"],
            {k: v for k, v in reasons.items() if k != "valid"},
            reader.error if reader.truncated else None,
            error,
        )
        yield pending | to_batch([end.columns()])

    def _group(
        self,
        item: TarItem,
        tp: TarPlan,
        index: int,
        samples: list[tuple[Sample, int]],
        res: list[tuple[int, int]],
        manifest: list[dict[str, Any]],
        views: tuple[int, ...] = (),
    ) -> dict[str, np.ndarray]:
        r, n = self.store.plan.shard_rows, self.group * self.store.plan.shard_rows
        row_start = tp.row_start + index * n
        valid = np.zeros(n, bool)
        px = {(s, p): np.zeros((n, s + 2 * p, s + 2 * p, 3), np.uint8) for s, p in res}
        keys = [""] * n
        images, boxes = [x for x, _ in samples], []
        for i, (x, k) in enumerate(samples):
            box = self._box(x, k)
            boxes.append(box)
            manifest.append(_manifest_row(tp, row_start + i, x, k, box))
            keys[i] = x.key
            if box is not None:
                assert x.pixels is not None  # a box only for a valid sample
                valid[i] = True
                for s, p in res:  # every geometry from the one decode
                    px[(s, p)][i] = margin_view(x.pixels, box, s, p)
        header = GroupHeader(item, index, row_start, -(-len(samples) // r), tuple(keys))
        if views:  # the student's views of the same decode, whole shards
            self.pixels.write(row_start, header.windows, [(x.pixels, b) for x, b in zip(images, boxes)], views)
        out = to_batch([header.columns() | TarEnd.absent()]) | {"valid": valid[None]}
        out |= {pixel_column(s, p): a[None] for (s, p), a in px.items()}
        return out

    def _box(self, sample: Sample, index: int) -> CropBox | None:
        if not sample.valid:
            return None
        assert sample.pixels is not None  # valid: decoded
        h, w = sample.pixels.shape[:2]
        s = self.settings
        return choose_crop(s.seed, sample.key, w, h, s.crop_kind, s.crop_scale, s.crop_ratio, index)


def _manifest_row(tp: TarPlan, row: int, x: Sample, index: int, box: CropBox | None) -> dict[str, Any]:
    h, w = x.pixels.shape[:2] if x.pixels is not None else (None, None)
    return {
        "row": row,
        "key": x.key,
        "uid": x.uid,
        "tar": tp.path,
        "tar_index": tp.index,
        "ordinal": x.ordinal,
        "offset": x.image.offset if x.image else None,
        "size": x.image.size if x.image else None,
        "valid": x.valid,
        "reason": x.reason,
        "width": w,
        "height": h,
        "crop_x": box.x if box else None,
        "crop_y": box.y if box else None,
        "crop_w": box.w if box else None,
        "crop_h": box.h if box else None,
        "crop_index": index,
    }


__all__ = ["TarDecoder", "windows_per_group"]
