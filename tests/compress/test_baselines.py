"""Average pooling to the budget's grid and pixel unshuffle, the baselines of Table A9."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radio.compress import avg_pool_tokens, pixel_shuffle_tokens, pixel_unshuffle_tokens, pool_grid, unmerge


@pytest.mark.parametrize(
    ("grid", "tokens", "pooled"),
    [
        ((27, 27), 196, (14, 14)),  # factors nicely: exactly T
        ((64, 64), 256, (16, 16)),
        ((12, 20), 50, (5, 10)),  # the input's aspect
        ((16, 16), 30, (6, 5)),
        ((64, 64), 512, (23, 22)),  # 16x32 is 2x too wide: the closest grid below, 506
        ((16, 16), 200, (14, 14)),  # 10x20 does not fit in 16 columns
        ((1, 100), 10, (1, 10)),  # no grid has the strip's aspect: the bound is dropped
    ],
)
def test_pool_grid(grid, tokens, pooled):
    assert pool_grid(grid, tokens) == pooled
    assert pooled[0] * pooled[1] <= tokens


@pytest.mark.parametrize(("grid", "tokens"), [((16, 16), 64), ((12, 20), 60)])
def test_pooling_is_adaptive_avg_pool_and_nearest_upsampling_when_the_grid_divides(grid, tokens):
    h, w = grid
    x = torch.randn(2, h * w, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = avg_pool_tokens(x, grid, tokens)
    hp, wp = pool_grid(grid, tokens)
    img = x.reshape(2, h, w, 5).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(img, (hp, wp))
    assert torch.allclose(res.tokens, pooled.flatten(2).transpose(1, 2))
    back = F.interpolate(pooled, size=(h, w), mode="nearest").flatten(2).transpose(1, 2)
    assert torch.allclose(unmerge(res.tokens, res.group), back)


def test_pooling_on_an_uneven_grid_uses_the_bins_of_nearest_upsampling():
    x = torch.randn(1, 27 * 27, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = avg_pool_tokens(x, (27, 27), 196)
    assert res.tokens.shape == (1, 196, 3) and int(res.sizes.sum()) == 729
    assert set(res.sizes[0].tolist()) == {1, 2, 4}  # 27 = 13 bins of 2 + 1 of 1, per axis
    img = x.reshape(1, 27, 27, 3).permute(0, 3, 1, 2)
    probe = torch.zeros(1, 1, 14, 14, dtype=torch.float64)
    probe[..., 5, 7] = 1  # which inputs does nearest upsampling send cell (5, 7) to?
    mask = F.interpolate(probe, size=(27, 27), mode="nearest")[0, 0].reshape(-1) > 0
    assert torch.allclose(res.tokens[0, 5 * 14 + 7], img.flatten(2)[0][:, mask].mean(1))


@pytest.mark.parametrize("grid", [(4, 6), (27, 27), (5, 8)])
def test_pixel_unshuffle_is_lossless_with_4x_channels(grid):
    h, w = grid
    x = torch.randn(2, h * w, 3, generator=torch.Generator().manual_seed(2))
    y, (h2, w2) = pixel_unshuffle_tokens(x, grid)
    assert (h2, w2) == (-(-h // 2), -(-w // 2)) and y.shape == (2, h2 * w2, 12)
    assert torch.equal(pixel_shuffle_tokens(y, grid), x)
    img = x.reshape(2, h, w, 3)
    assert torch.equal(y[:, 0], torch.cat([img[:, 0, 0], img[:, 0, 1], img[:, 1, 0], img[:, 1, 1]], -1))
