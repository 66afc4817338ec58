"""SAM mosaic geometry (paper §4.3, DESIGN.md §4): k×k images per canvas-sized teacher input.

The canvas (1024 for SAM) is cut into k×k tiles of ``t = canvas / k``. Each image, already at
the student resolution ``s ≤ t``, sits in its tile at an offset that is a multiple of the patch
size (the rest of the tile is padding: zeros in normalized space, i.e. the mean colour, as SAM
pads). One teacher forward then serves k² images, and each image's target is the
``(s / patch)²`` block of the teacher's grid under it, which lines up with the student's own
token grid at ``s`` because offsets are patch-aligned. Pure tensor functions, no I/O.
"""

from __future__ import annotations

import numpy as np
import torch

from radio.shards.crops import key_seed


def tile_slack(canvas: int, k: int, resolution: int) -> int:
    """Pixels of padding per tile side: ``canvas / k - resolution``."""
    slack = canvas // k - resolution
    if canvas % k or slack < 0:
        raise ValueError(f"mosaic {k} tiles of a {canvas} canvas cannot hold resolution {resolution}")
    return slack


def tile_offsets(seed: int, keys: list[str], canvas: int, k: int, resolution: int, patch: int) -> np.ndarray:
    """``[n, 2]`` (dy, dx) of each image inside its tile: patch-aligned, seeded per sample key.

    Random offsets vary where images sit relative to the teacher's position embedding, which the
    paper credits for cleaner features; seeding by key makes a resumed run place them identically.
    """
    slack = tile_slack(canvas, k, resolution)
    steps = slack // patch + 1
    out = np.zeros((len(keys), 2), dtype=np.int64)
    for i, key in enumerate(keys):
        rng = np.random.default_rng(key_seed(seed, f"mosaic:{key}"))
        out[i] = rng.integers(0, steps, size=2) * patch
    return out


def _origins(n: int, k: int, canvas: int, offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """(canvas index, y, x) of the top-left pixel of each of ``n`` images."""
    t = canvas // k
    out = []
    for i in range(n):
        slot = i % (k * k)
        out.append((i // (k * k), (slot // k) * t + int(offsets[i, 0]), (slot % k) * t + int(offsets[i, 1])))
    return out


def compose(images: torch.Tensor, k: int, canvas: int, offsets: np.ndarray) -> torch.Tensor:
    """Tile ``images [n, 3, s, s]`` (normalized) into ``[ceil(n / k²), 3, canvas, canvas]`` canvases."""
    n, c, s, _ = images.shape
    m = -(-n // (k * k))
    out = images.new_zeros((m, c, canvas, canvas))
    for i, (j, y, x) in enumerate(_origins(n, k, canvas, offsets)):
        out[j, :, y : y + s, x : x + s] = images[i]
    return out


def split(features: torch.Tensor, n: int, k: int, canvas: int, resolution: int, offsets: np.ndarray) -> torch.Tensor:
    """Each image's block of the teacher grid: ``features [m, H, W, C]`` → ``[n, s/p, s/p, C]``."""
    p = canvas // features.shape[1]
    g = resolution // p
    blocks = [features[j, y // p : y // p + g, x // p : x // p + g] for j, y, x in _origins(n, k, canvas, offsets)]
    return torch.stack(blocks)
