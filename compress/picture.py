"""Pictures of merged regions (paper Figure 8 / A3): the image beside its token groups."""

from __future__ import annotations

import numpy as np

__all__ = ["group_picture"]

GAP = 8  # white pixels between panels


def _upsample(group: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``group [h, w]`` → ``[H, W]`` by nearest neighbour (the pixels of each patch)."""
    h, w = group.shape
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return group[rows[:, None], cols[None, :]]


def group_picture(image: np.ndarray, group: np.ndarray, seed: int = 0, alpha: float = 0.5) -> np.ndarray:
    """Three panels, ``[H, 3W + 2·GAP, 3]`` uint8: ``image [H, W, 3]`` uint8; the image tinted
    with a random colour per group (``group [h, w]``, merged-token index per patch) with the
    group boundaries in black; each group filled with its mean pixel colour (what unmerging
    the tokens shows when each token is its pixels' mean)."""
    height, width, _ = image.shape
    labels = _upsample(np.asarray(group), (height, width))
    n = int(labels.max()) + 1
    palette = np.random.default_rng(seed).integers(0, 256, size=(n, 3))
    tinted = (1 - alpha) * image + alpha * palette[labels]
    edge = np.zeros((height, width), dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    tinted[edge] = 0
    flat = labels.reshape(-1)
    counts = np.bincount(flat, minlength=n)[:, None]
    means = np.stack([np.bincount(flat, weights=image[..., c].reshape(-1), minlength=n) for c in range(3)], 1)
    mean_fill = (means / np.maximum(counts, 1))[labels]
    gap = np.full((height, GAP, 3), 255.0)
    out = np.concatenate([image.astype(np.float64), gap, tinted, gap, mean_fill], axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
