"""Decode one sample's image bytes to RGB, turning every failure into a recorded reason.

Both phases decode through :func:`decode_image`, so featurize and the trainer agree on the pixels
of a row. A failure is never an exception: it is one of :data:`REASONS`, which the manifest
records next to the row (DESIGN.md §3 invariant 4).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from radio.errors import RadioError

REASONS = (
    "missing_image",  # the sample has no image member
    "empty_image",  # zero-byte image member
    "corrupt_image",  # not decodable as an image
    "truncated_image",  # decoding stopped before the end of the data
    "too_small",  # shorter side below the configured minimum
    "decompression_bomb",  # more pixels than the configured limit
    "truncated_tar",  # the tar ended inside this sample
)
"""Every reason a row can be invalid, in the order the run summary lists them."""

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


@dataclass(frozen=True)
class ImageLimits:
    min_size: int = 32
    max_pixels: int = 64_000_000


@dataclass(frozen=True)
class Decoded:
    """An RGB image ``[H, W, 3] uint8`` or the reason there is none."""

    pixels: np.ndarray | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB, preserving what a viewer would show."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit: PIL's convert('L') clips at 255; scale the full range instead.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels carry arbitrary colours; show them on white as a viewer would.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | None, limits: ImageLimits = ImageLimits()) -> Decoded:
    """Decode image bytes: EXIF orientation applied, any mode converted to RGB.

    Returns ``Decoded(pixels [H, W, 3] uint8, None)`` or ``Decoded(None, reason)``.
    """
    if data is None:
        return Decoded(None, "missing_image")
    if len(data) == 0:
        return Decoded(None, "empty_image")
    try:
        with warnings.catch_warnings():
            # PIL warns (and raises past 2x its own limit) on huge images; our limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > limits.max_pixels:
            return Decoded(None, "decompression_bomb")
        img.load()
    except Image.DecompressionBombError:
        return Decoded(None, "decompression_bomb")
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError) as e:
        truncated = isinstance(e, OSError) and "truncated" in str(e).lower()
        return Decoded(None, "truncated_image" if truncated else "corrupt_image")
    try:
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except (OSError, ValueError, SyntaxError):
        return Decoded(None, "corrupt_image")
    if min(rgb.size) < limits.min_size:
        return Decoded(None, "too_small")
    return Decoded(np.asarray(rgb, dtype=np.uint8), None)


class ImageReadError(RadioError):
    """An image file given by the user cannot be used (missing, unreadable, too small, ...)."""


def read_image_file(path: str | Path, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """The one reader of image *files* (eval, viz, compress): ``[H, W, 3] uint8`` RGB decoded
    exactly as featurize decodes tar members (:func:`decode_image`: EXIF orientation applied,
    any mode to RGB), so a rotated phone photo is upright everywhere."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
    decoded = decode_image(data, limits)
    if not decoded.ok:
        assert decoded.reason is not None  # not ok: there is a reason
        raise ImageReadError(f"cannot read image {path}: {decoded.reason.replace('_', ' ')}")
    assert decoded.pixels is not None  # ok: there are pixels
    return decoded.pixels
