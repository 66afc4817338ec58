"""What the trained probes share: the crop check, the learning-rate schedule, input geometry."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EvalError


def check_crop(crop: int, unit: int, flag: str = "--crop") -> int:
    """Refuse a crop that is not a positive multiple of the patch: the feature grid would cut
    the crop's last pixels off silently (NVlabs/RADIO#73)."""
    if crop <= 0 or crop % unit:
        raise EvalError(f"{flag} {crop} is not a positive multiple of the patch size {unit}")
    return crop


def warmup_poly(step: int, warmup: int, total: int, power: float = 1.0) -> float:
    """mmseg's LinearLR warm-up then PolyLR: the learning-rate factor at ``step`` (0-based):
    rising linearly from ``1/warmup`` to 1 over ``warmup`` steps, then ``(1 - t)^power`` down to 0
    at ``total``, ``t`` the share of the post-warm-up steps done."""
    if step < warmup:
        return (step + 1) / warmup
    rest = max(1, total - warmup)
    return max(0.0, 1.0 - (step - warmup) / rest) ** power


def whole_size(h: int, w: int, short: int, unit: int) -> tuple[int, int]:
    """The input size for whole-image inference: the short side scaled to ``short``, both sides
    rounded to multiples of ``unit`` (at least one)."""
    s = short / min(h, w)
    return max(unit, round(h * s / unit) * unit), max(unit, round(w * s / unit) * unit)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``[H, W, 3] uint8`` → ``[3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` → ``[3, *size]``: bilinear, antialiased when shrinking."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def resize_nearest(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A label or depth map ``[H, W]`` resized by nearest neighbour (no new values appear)."""
    if tuple(target.shape) == tuple(size):
        return target
    return F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)


def random_crop(
    img: torch.Tensor, target: torch.Tensor, crop: int, fill: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``crop x crop`` window of ``img [3, H, W]`` and ``target [H, W]``, padded (image
    0, target ``fill``) where the image is smaller, and flipped left-right half the time."""
    _, h, w = img.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph))
        target = F.pad(target[None].float(), (0, pw, 0, ph), value=fill)[0].to(target.dtype)
    _, h, w = img.shape
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    img, target = img[:, y : y + crop, x : x + crop], target[y : y + crop, x : x + crop]
    if rng.random() < 0.5:
        img, target = img.flip(-1), target.flip(-1)
    return img, target


def grids_to_nchw(grids: list[torch.Tensor]) -> torch.Tensor:
    """``[B, h, w, C_i]`` per layer → their concatenation ``[B, sum C_i, h, w]``."""
    return torch.cat(grids, dim=-1).permute(0, 3, 1, 2).contiguous()
