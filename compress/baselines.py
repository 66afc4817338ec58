"""Baselines for token merging at the same budget: average pooling and pixel unshuffle.

**Average pooling** to an h'×w' grid with h'·w' ≤ T (:func:`pool_grid`): the largest grid whose
aspect ratio is within ``max_aspect`` (1.5×) of the input grid's, so h'·w' = T exactly when T
factors nicely (27×27 → 196: 14×14; 12×20 → 50: 5×10), else the closest grid below it (64×64 →
512: 22×23 = 506, since 16×32 is 2× too wide). Unmerged by nearest upsampling. The bins are the
preimages of nearest upsampling (input row i → pooled row ⌊i·h'/h⌋), so each pooled token is
the mean of exactly the tokens it is copied back to, the best any pooled value can do for that
unmerge. When h' divides h and w' divides w this is ``adaptive_avg_pool2d`` followed by
``interpolate(mode="nearest")``; otherwise torch's adaptive bins overlap and reconstruct worse.
Pooling is returned as a :class:`~.tome.MergeResult` with a fixed group map, so it is measured
by the same code as ToMe.

**Pixel unshuffle** (InternVL-style 2×2 channel grouping): lossless, it divides the tokens by
4 and multiplies the channels by 4, so it is reported by its shape instead of an error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tome import MergeResult, grid_positions, group_means, wide_float

MAX_ASPECT = 1.5

__all__ = [
    "MAX_ASPECT",
    "avg_pool_tokens",
    "pixel_shuffle_tokens",
    "pixel_unshuffle_tokens",
    "pool_grid",
    "pool_groups",
]


def pool_grid(grid: tuple[int, int], tokens: int, max_aspect: float = MAX_ASPECT) -> tuple[int, int]:
    """The pooled grid (h', w') for a budget of ``tokens``: h' ≤ h, w' ≤ w, h'·w' ≤ tokens, aspect
    within ``max_aspect`` of h/w; the most tokens, then the closest aspect, then the larger h'.
    If no grid meets the aspect bound (an extreme strip), the bound is dropped."""
    h, w = grid
    if tokens < 1:
        raise ValueError(f"target of {tokens} tokens must be ≥ 1")
    target = math.log(h / w)
    best, fallback = None, None
    for hp in range(1, h + 1):
        for wp in range(1, min(w, tokens // hp) + 1):
            err = abs(math.log(hp / wp) - target)
            key = (hp * wp, -err, hp)
            fallback = max(fallback or key, key)
            if err <= math.log(max_aspect) + 1e-12:
                best = max(best or key, key)
    chosen = best or fallback
    assert chosen is not None  # tokens ≥ 1, so the 1×1 grid is always a candidate
    return chosen[2], chosen[0] // chosen[2]


def pool_groups(grid: tuple[int, int], pooled: tuple[int, int], device=None) -> torch.Tensor:
    """``[h·w]`` int64: the pooled cell (row-major on h'×w') that nearest upsampling copies back
    to each input token."""
    (h, w), (hp, wp) = grid, pooled
    rows = torch.arange(h, device=device) * hp // h
    cols = torch.arange(w, device=device) * wp // w
    return (rows[:, None] * wp + cols[None, :]).reshape(-1)


def avg_pool_tokens(x: torch.Tensor, grid: tuple[int, int], tokens: int, max_aspect: float = MAX_ASPECT) -> MergeResult:
    """Average-pool ``x [B, N, C]`` (h×w grid) to the grid of :func:`pool_grid`: a
    :class:`MergeResult` with h'·w' ≤ ``tokens`` tokens, in raster order of the pooled grid."""
    b, n, _ = x.shape
    pooled = pool_grid(grid, tokens, max_aspect)
    group = pool_groups(grid, pooled, x.device).expand(b, n).clone()
    t = pooled[0] * pooled[1]
    merged, sizes = group_means(wide_float(x), group, t)
    positions, _ = group_means(grid_positions(grid, x.device).expand(b, n, 2), group, t)
    # A pooled cell has no surviving token; its anchor is its first input token in raster order.
    index = torch.arange(n, device=x.device).expand(b, n)
    anchors = torch.full((b, t), n, device=x.device).scatter_reduce(1, group, index, "amin")
    return MergeResult(merged.to(x.dtype), sizes, group, positions, anchors, (t,))


def pixel_unshuffle_tokens(x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x [B, h·w, C]`` → ``([B, ⌈h/2⌉·⌈w/2⌉, 4C], (⌈h/2⌉, ⌈w/2⌉))``: each 2×2 block becomes one
    token, channels ordered (dy, dx, c). An odd last row/column is padded by repeating it."""
    b, _, c = x.shape
    h, w = grid
    img = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
    img = F.pad(img, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else img
    h2, w2 = img.shape[2] // 2, img.shape[3] // 2
    blocks = img.reshape(b, c, h2, 2, w2, 2).permute(0, 2, 4, 3, 5, 1)  # [B, h2, w2, dy, dx, C]
    return blocks.reshape(b, h2 * w2, 4 * c), (h2, w2)


def pixel_shuffle_tokens(y: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pixel_unshuffle_tokens` for the original h×w ``grid``: ``[B, h·w, C]``."""
    h, w = grid
    b, _, c4 = y.shape
    h2, w2, c = -(-h // 2), -(-w // 2), c4 // 4
    img = y.reshape(b, h2, w2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h2, 2 * w2, c)
    return img[:, :h, :w].reshape(b, h * w, c)
