"""`radio compress` reads images through the one image reader: a phone photo stored sideways with
an EXIF orientation tag is merged upright, exactly like the same photo stored upright."""

from __future__ import annotations

import numpy as np
from PIL import Image

from radio.compress.images import read_image


def _photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((96, 64))  # landscape, so a turn changes the shape


def test_compress_applies_exif_orientation(tmp_path):
    upright = _photo()
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the pixels are stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    a = read_image(tmp_path / "upright.png", 64)
    b = read_image(tmp_path / "phone.png", 64)
    assert np.array_equal(a, b)
    sideways = np.asarray(Image.open(tmp_path / "phone.png").convert("RGB").resize((64, 64), Image.Resampling.BICUBIC))
    assert not np.array_equal(a, sideways)  # without the tag applied the picture would differ
