"""A token merger for a VLM projector: ``[B, N, C]`` on an h×w grid → exactly ``T`` tokens."""

from __future__ import annotations

import torch
from torch import nn

from .tome import LAYOUTS, MergeResult, merge_tokens

__all__ = ["TokenMerger"]


class TokenMerger(nn.Module):
    """Strided ToMe (:func:`~radio.compress.tome.merge_tokens`) as a module with no parameters.

    ``forward(x [B, N, C], grid (h, w), metric=None)`` → :class:`~radio.compress.tome.MergeResult`
    with ``tokens [B, T, C]``, ``sizes [B, T]``, ``group [B, N]``. The matching is discrete (no
    gradient); the merged tokens are group means of ``x``, so gradients reach every input token.
    A grid of exactly T tokens passes through unchanged. ``seed``: random destinations within each
    window (tomesd), a fresh draw per call from one generator; None (default) is deterministic.
    """

    def __init__(
        self, tokens: int, stride: tuple[int, int] | str = (2, 2), layout: str = "strided", seed: int | None = None
    ):
        super().__init__()
        if tokens < 1:
            raise ValueError(f"tokens must be ≥ 1, got {tokens}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
        self.tokens, self.layout, self.seed = tokens, layout, seed
        self.stride = stride if stride == "auto" else tuple(stride)  # "auto": one round per grid (auto_stride)
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], metric: torch.Tensor | None = None) -> MergeResult:
        if x.shape[1] < self.tokens:
            raise ValueError(f"cannot merge {x.shape[1]} tokens up to {self.tokens}")
        return merge_tokens(
            x,
            grid,
            self.tokens,
            stride=self.stride,  # type: ignore[arg-type]
            layout=self.layout,  # type: ignore[arg-type]
            generator=self._generator,
            metric=metric,
        )

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, stride={self.stride}, layout={self.layout!r}, seed={self.seed}"
