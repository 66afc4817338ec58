"""Crop boxes: which part of a row's image every teacher and the student see.

Featurize chooses ``crops_per_image`` boxes per image, each a pure function of the run seed, the
sample key and the crop index (so a resumed run picks the same boxes), and records them in the
manifest, one row per crop. The trainer reads a box back and resizes the same crop to the stage
resolution with :func:`crop_resize`, the one resize both phases use.

The default law is RADIO's (torchvision's ``RandomResizedCrop``): area a fraction U(scale) of the
image, aspect ratio log-uniform in ``ratio``, up to 10 attempts, then a centred fallback. The box is
a ``w``×``h`` rectangle, resized (squashed) to the square teacher/student side.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

CROP_KINDS = ("random_resized", "random_square", "center_square")
RRC_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


@dataclass(frozen=True)
class CropBox:
    """A ``w``×``h`` box with top-left corner ``(x, y)`` in image pixels."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def square(cls, x: int, y: int, size: int) -> CropBox:
        return cls(x, y, size, size)


def key_seed(seed: int, key: str, index: int = 0) -> np.random.SeedSequence:
    """Seed sequence for crop ``index`` of one sample: independent of the order samples are
    processed in. Crop 0 has the seed it had before crops were indexed (old stores' boxes)."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.SeedSequence([seed, digest] + ([index] if index else []))


def random_resized(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> CropBox:
    """torchvision ``RandomResizedCrop.get_params``, drawn from ``rng``: area ``U(scale)`` × the
    image area, aspect ``w / h`` log-uniform in ``ratio``; after 10 misses, the whole image
    clamped to ``ratio`` and centred."""
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(RRC_ATTEMPTS):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y = int(rng.integers(0, height - h + 1))
            x = int(rng.integers(0, width - w + 1))
            return CropBox(x, y, w, h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return CropBox((width - w) // 2, (height - h) // 2, w, h)


def choose_crop(
    seed: int,
    key: str,
    width: int,
    height: int,
    kind: str,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    index: int = 0,
) -> CropBox:
    """Crop ``index`` of sample ``key`` in a ``width``×``height`` image.

    ``random_resized``: RADIO's law (:func:`random_resized`; ``scale`` is the area fraction).
    ``random_square``: side uniform in ``scale`` × the shorter side, position uniform.
    ``center_square``: the largest centred square scaled by ``scale[1]`` (the same for every index).
    """
    if kind == "center_square":
        side = max(1, int(round(scale[1] * min(width, height))))
        return CropBox.square((width - side) // 2, (height - side) // 2, side)
    if kind not in CROP_KINDS:
        raise ValueError(f"unknown crop kind {kind!r} (known: {', '.join(CROP_KINDS)})")
    rng = np.random.default_rng(key_seed(seed, key, index))
    if kind == "random_resized":
        return random_resized(rng, width, height, scale, ratio)
    side = max(1, int(round(rng.uniform(*scale) * min(width, height))))
    x = int(rng.integers(0, width - side + 1))
    y = int(rng.integers(0, height - side + 1))
    return CropBox.square(x, y, side)


def crop_resize(pixels: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """``[H, W, 3] uint8`` → the box resized to ``[size, size, 3] uint8`` (bicubic, antialiased;
    a non-square box is squashed to the square, as ``RandomResizedCrop`` does)."""
    crop = pixels[box.y : box.y + box.h, box.x : box.x + box.w]
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    # PIL widens the bicubic kernel when shrinking, i.e. antialiases, which torch's default does not.
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC))


def margin_view(pixels: np.ndarray, box: CropBox, size: int, pad: int = 0) -> np.ndarray:
    """The box resized to ``size`` and extended by ``pad`` output pixels on every side:
    ``[H, W, 3] uint8`` → ``[size + 2·pad, size + 2·pad, 3] uint8``, at the scale of
    ``crop_resize(pixels, box, size)`` (one output pixel = ``w / size`` × ``h / size`` image pixels).

    The one view both phases take of a row (issue 26): featurize gives a teacher with a
    ``shift_margin`` of m patches ``pad = m · patch``; phase 2 gives the student the pad its shift
    offsets need and takes windows of it. Where the extended box leaves the image, the image's
    edge pixels are repeated (the same in both phases). ``pad = 0`` is :func:`crop_resize`.
    """
    if pad == 0:
        return crop_resize(pixels, box, size)
    ex, ey = pad * box.w / size, pad * box.h / size  # the pad in image pixels
    # Edge-pad enough for the extension and the bicubic support (2 taps, widened when shrinking).
    border = int(math.ceil(max(ex, ey) + 2 * max(box.w, box.h) / size)) + 2
    padded = np.pad(pixels, ((border, border), (border, border), (0, 0)), mode="edge")
    x0, y0 = box.x + border - ex, box.y + border - ey
    side = size + 2 * pad
    src = (x0, y0, x0 + box.w + 2 * ex, y0 + box.h + 2 * ey)
    return np.asarray(Image.fromarray(padded).resize((side, side), Image.Resampling.BICUBIC, box=src))
