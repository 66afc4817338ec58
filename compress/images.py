"""Images for `radio compress`: find them, read them at the model's resolution."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from radio.errors import RadioError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

__all__ = ["IMAGE_SUFFIXES", "CompressError", "find_images", "read_image"]


class CompressError(RadioError):
    """A user's mistake: a missing or unreadable image, a budget the grid cannot meet."""


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise CompressError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise CompressError(f"{path}: no such file or folder")
    if not found:
        raise CompressError("no images given (--images FILE_OR_FOLDER)")
    return found


def read_image(path: Path, resolution: int) -> np.ndarray:
    """RGB ``[R, R, 3]`` uint8: the whole image resized to R×R (bicubic). The aspect ratio is not
    kept, as for a VLM's fixed-size input: nothing is cropped away. Decoded by the one image
    reader of every command (:func:`radio.shards.images.read_image_file`: EXIF orientation)."""
    from PIL import Image

    from radio.shards.images import ImageLimits, ImageReadError, read_image_file

    try:
        pixels = read_image_file(path, ImageLimits(min_size=1))
    except ImageReadError as e:
        raise CompressError(str(e)) from None
    rgb = Image.fromarray(pixels).resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)
