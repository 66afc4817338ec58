"""On real pictures, merging by similarity beats pooling, and strided destinations beat random ones
at the paper's high-resolution budgets.

Features: a random-init ``dinov2_tiny`` teacher's patch features (fixed seed, so deterministic).
They come from a transformer, so like a trained encoder's they mix each patch's pixels with
context and vary smoothly where the image does, and they separate text from paper and the
astronaut from the background. Hand-made per-patch descriptors (pooled pixels, colour and
gradient statistics) order ToMe against pooling the same way but are noisier, so the
strided-vs-random comparison drifts with them.

Measured with these features (relative MSE; random: mean ± sd over 10 seeds):

    image      grid → T       strided   random            avg pool
    page       27² → 196      0.0137    0.0142 ± 0.0005   0.0311
    page       64² → 512      0.0070    0.0072 ± 0.0001   0.0315
    page       64² → 256      0.0137    0.0139 ± 0.0004   0.0353
    astronaut  27² → 196      0.0510    0.0497 ± 0.0024   0.1364
    astronaut  64² → 512      0.0283    0.0295 ± 0.0007   0.1077
    astronaut  64² → 256      0.0497    0.0534 ± 0.0020   0.1293

ToMe beats pooling by 2-4x everywhere. Strided beats every random seed only at 64² → 512 and on
the photo at 64² → 256 (the paper's 1024 px budgets); at 27² and on the page at 256 the two are
within seed noise, so that comparison is asserted only where it holds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radio.compress import avg_pool_tokens, merge_tokens, reconstruction_error, unmerge

RANDOM_SEEDS = range(4)


@pytest.fixture(scope="module")
def teacher():
    from radio.featurize.teachers.registry import create_teacher

    return create_teacher("dinov2_tiny")


def _image(name: str) -> torch.Tensor:
    from skimage import color, data

    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = color.gray2rgb(pixels)
    return torch.from_numpy(np.ascontiguousarray(pixels[..., :3])).permute(2, 0, 1)[None].float() / 255


def _features(teacher, name: str, grid: int) -> torch.Tensor:
    """``[1, grid², 48]`` patch features of the image resized to grid·14 px."""
    image = F.interpolate(_image(name), size=(grid * 14, grid * 14), mode="bilinear", antialias=True)
    with torch.no_grad():
        feats = teacher(image).features
    return feats.reshape(1, grid * grid, -1)


def _error(x, res) -> float:
    return reconstruction_error(x, unmerge(res.tokens, res.group)).mean_relative_mse


@pytest.mark.parametrize(
    ("name", "grid", "tokens", "vs_random"),
    [
        ("page", 27, 196, False),
        ("text", 27, 196, False),
        ("astronaut", 27, 196, False),
        ("page", 64, 512, True),
        ("astronaut", 64, 512, True),
        ("astronaut", 64, 256, True),
    ],
)
def test_tome_beats_pooling_and_random_destinations(teacher, name, grid, tokens, vs_random):
    x = _features(teacher, name, grid)
    strided = _error(x, merge_tokens(x, (grid, grid), tokens))
    pooled = _error(x, avg_pool_tokens(x, (grid, grid), tokens))
    assert strided < 0.5 * pooled
    if vs_random:
        random = [
            _error(
                x, merge_tokens(x, (grid, grid), tokens, layout="random", generator=torch.Generator().manual_seed(s))
            )
            for s in RANDOM_SEEDS
        ]
        assert strided < min(random), (strided, random)
