"""Every compressor at one token budget, measured the same way (the rows of paper Table A9).

Methods: ToMe with strided destinations (the product), ToMe with random destinations (the
sink-layout baseline: same matching, destinations drawn at random), average pooling to the
closest grid, and pixel unshuffle (lossless, 4× the channels, so it is reported by its shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .baselines import avg_pool_tokens, pixel_shuffle_tokens, pixel_unshuffle_tokens, pool_grid
from .tome import MergeResult, merge_tokens, reconstruction_error, unmerge

TOME_STRIDED = "ToMe strided"
TOME_RANDOM = "ToMe random dest"
AVG_POOL = "avg pool"
PIXEL_UNSHUFFLE = "pixel unshuffle"

__all__ = ["AVG_POOL", "PIXEL_UNSHUFFLE", "TOME_RANDOM", "TOME_STRIDED", "MethodScore", "compare_methods"]


@dataclass(frozen=True)
class MethodScore:
    """One compressor on a batch: its output ``tokens`` and ``channels`` per image, and per image
    ``relative_mse [B]`` / ``cosine [B]`` of the unmerged tokens (None where lossless by
    construction), the largest group, a ``detail`` such as the pooled grid, and ToMe's rounds."""

    method: str
    tokens: int
    channels: int
    relative_mse: torch.Tensor | None
    cosine: torch.Tensor | None
    max_group: int
    detail: str = ""
    rounds: int | None = None  # merging rounds (ToMe); None for one-shot methods


def _score(
    method: str, x: torch.Tensor, result: MergeResult, detail: str = "", rounds: int | None = None
) -> MethodScore:
    rec = reconstruction_error(x, unmerge(result.tokens, result.group))
    return MethodScore(
        method,
        result.tokens.shape[1],
        result.tokens.shape[2],
        rec.relative_mse,
        rec.cosine,
        int(result.sizes.max()),
        detail,
        rounds,
    )


def compare_methods(
    x: torch.Tensor, grid: tuple[int, int], tokens: int, *, stride: tuple[int, int] | str = (2, 2), seed: int = 0
) -> tuple[list[MethodScore], MergeResult]:
    """Score every method on ``x [B, N, C]`` (h×w ``grid``) at a budget of ``tokens``.

    Returns the scores (in table order) and the strided ToMe result itself (what gets shipped).
    ``seed`` draws the random destinations.
    """
    strided = merge_tokens(x, grid, tokens, stride=stride)
    stride = strided.stride
    random = merge_tokens(
        x, grid, tokens, stride=stride, layout="random", generator=torch.Generator().manual_seed(seed)
    )
    pooled = avg_pool_tokens(x, grid, tokens)
    hp, wp = pool_grid(grid, tokens)
    unshuffled, (h2, w2) = pixel_unshuffle_tokens(x, grid)
    if not torch.equal(pixel_shuffle_tokens(unshuffled, grid), x):
        raise AssertionError("pixel unshuffle must be lossless")  # a bug, not a user error
    rounds = " → ".join(str(c) for c in (grid[0] * grid[1], *strided.counts))
    scores = [
        _score(TOME_STRIDED, x, strided, f"{stride[0]}x{stride[1]} windows, {rounds}", strided.rounds),
        _score(TOME_RANDOM, x, random, f"seed {seed}", random.rounds),
        _score(AVG_POOL, x, pooled, f"{hp}x{wp} grid"),
        MethodScore(PIXEL_UNSHUFFLE, h2 * w2, unshuffled.shape[2], None, None, 4, "2x2 → channels, lossless"),
    ]
    return scores, strided
