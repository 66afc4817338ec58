"""The crop law: RADIO's random-resized crop (torchvision RandomResizedCrop's rule) as the default."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radio.shards.crops import CropBox, choose_crop, crop_resize


@pytest.mark.parametrize("width,height", [(640, 480), (720, 1280)])
def test_random_resized_crop_has_radio_area_and_aspect_and_stays_inside(width, height):
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    n = 2000
    boxes = [choose_crop(0, f"k{i}", width, height, "random_resized", (0.5, 1.0)) for i in range(n)]
    x, y, w, h = (np.array([getattr(b, f) for b in boxes]) for f in ("x", "y", "w", "h"))
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= width).all() and (y + h <= height).all()
    area = w * h / (width * height)
    assert 0.49 <= area.min() and area.max() <= 1.0
    # The area is drawn U(0.5, 1) (mean 0.75), but a large box with a strong aspect overflows the
    # image and is redrawn, so kept boxes average less: 0.66 of a 640x480 image, as torchvision's.
    torch_manual = np.random.default_rng(0)  # torchvision draws from torch's global generator
    import torch

    torch.manual_seed(int(torch_manual.integers(1 << 31)))
    image = Image.new("RGB", (width, height))
    ref = [RandomResizedCrop.get_params(image, [0.5, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    ref_area = np.array([bh * bw for _, _, bh, bw in ref]) / (width * height)
    assert abs(area.mean() - ref_area.mean()) < 0.012, (area.mean(), ref_area.mean())
    assert 0.60 < area.mean() < 0.70
    aspect = w / h
    drawn = ~((x == (width - w) // 2) & (y == (height - h) // 2) & (area > 0.99))  # not the fallback
    assert drawn.mean() > 0.9
    # rounding to whole pixels moves the ratio by under 1 %
    assert aspect[drawn].min() >= 0.75 * 0.99 and aspect[drawn].max() <= 4 / 3 * 1.01


def test_small_boxes_have_the_drawn_area_mean():
    # With scale (0.1, 0.3) no box overflows: the kept area is the drawn U(0.1, 0.3), mean 0.2.
    boxes = [choose_crop(3, f"k{i}", 500, 500, "random_resized", (0.1, 0.3)) for i in range(4000)]
    area = np.array([b.w * b.h for b in boxes]) / 500**2
    assert abs(area.mean() - 0.2) < 0.005
    log_aspect = np.log([b.w / b.h for b in boxes])  # log-uniform in (3/4, 4/3): symmetric about 0
    assert abs(log_aspect.mean()) < 0.01
    assert math.log(0.75 * 0.98) < log_aspect.min() < math.log(0.76) and math.log(1.32) < log_aspect.max()
    assert log_aspect.max() < math.log(4 / 3 * 1.02)


def test_fallback_is_the_centred_ratio_clamped_box():
    # A 10:1 strip: no drawn box with aspect in (3/4, 4/3) and area >= half fits, so the fallback.
    box = choose_crop(0, "strip", 1000, 100, "random_resized", (0.5, 1.0))
    assert box == CropBox((1000 - 133) // 2, 0, 133, 100)


def test_crops_are_pure_functions_of_seed_key_and_index():
    a = [choose_crop(7, "img", 640, 480, "random_resized", (0.5, 1.0), index=k) for k in range(4)]
    b = [choose_crop(7, "img", 640, 480, "random_resized", (0.5, 1.0), index=k) for k in range(4)]
    assert a == b and len(set(a)) == 4  # K indices, K different boxes
    assert choose_crop(8, "img", 640, 480, "random_resized", (0.5, 1.0)) != a[0]


def test_square_kinds_still_work_and_crop_zero_keeps_its_old_box():
    sq = choose_crop(0, "img", 640, 480, "random_square", (0.5, 1.0))
    assert sq.w == sq.h and 240 <= sq.w <= 480
    # The box today's code drew before crops were indexed (seed 0, key "img"): old stores still match.
    rng = np.random.default_rng(np.random.SeedSequence([0, _digest("img")]))
    side = max(1, int(round(rng.uniform(0.5, 1.0) * 480)))
    assert sq == CropBox(int(rng.integers(0, 640 - side + 1)), int(rng.integers(0, 480 - side + 1)), side, side)
    assert choose_crop(0, "img", 640, 480, "center_square", (1.0, 1.0)) == CropBox(80, 0, 480, 480)
    with pytest.raises(ValueError, match=r"^unknown crop kind 'x' \(known: random_resized, random_square"):
        choose_crop(0, "img", 640, 480, "x", (0.5, 1.0))


def test_crop_resize_squashes_the_rectangle_to_the_square():
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, 30:] = 255  # right half white
    out = crop_resize(pixels, CropBox(10, 0, 40, 20), 16)  # x 10..50: half black, half white
    assert out.shape == (16, 16, 3)
    assert out[:, :6].max() < 30 and out[:, 10:].min() > 225


def _digest(key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
