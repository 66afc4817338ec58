"""Crop boxes: which part of a row's image every teacher and the student see.

Featurize chooses a box per sample, seeded by the run seed and the sample key (so a resumed
run picks the same box), and records it in the manifest. The trainer reads the box back and
resizes the same crop to the stage resolution with :func:`crop_resize`, the one resize both
phases use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CropBox:
    """A square ``size``×``size`` box with top-left corner ``(x, y)`` in image pixels."""

    x: int
    y: int
    size: int


def key_seed(seed: int, key: str) -> np.random.SeedSequence:
    """Seed sequence for one sample: independent of the order samples are processed in."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.SeedSequence([seed, digest])


def choose_crop(seed: int, key: str, width: int, height: int, kind: str, scale: tuple[float, float]) -> CropBox:
    """The crop box of sample ``key`` in a ``width``×``height`` image.

    ``random_square``: side uniform in ``scale`` × the shorter side, position uniform.
    ``center_square``: the largest centred square scaled by ``scale[1]``.
    """
    short = min(width, height)
    if kind == "center_square":
        side = max(1, int(round(scale[1] * short)))
        return CropBox((width - side) // 2, (height - side) // 2, side)
    if kind != "random_square":
        raise ValueError(f"unknown crop kind {kind!r} (known: random_square, center_square)")
    rng = np.random.default_rng(key_seed(seed, key))
    side = max(1, int(round(rng.uniform(*scale) * short)))
    x = int(rng.integers(0, width - side + 1))
    y = int(rng.integers(0, height - side + 1))
    return CropBox(x, y, side)


def crop_resize(pixels: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """``[H, W, 3] uint8`` → the box resized to ``[size, size, 3] uint8`` (bicubic, antialiased)."""
    crop = pixels[box.y : box.y + box.size, box.x : box.x + box.size]
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    # PIL widens the bicubic kernel when shrinking, i.e. antialiases, which torch's default does not.
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC))
