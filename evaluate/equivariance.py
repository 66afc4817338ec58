"""Scale equivariance (paper §3.1, §4.1.1, appendix A.5; Table 2): how much features change with
the input resolution, once brought to a common grid.

For one image's features at several resolutions ``F_1 .. F_S`` (``[h_i, w_i, C]``):

1. ``F_min``: the features with the smallest grid ``h_0 × w_0``;
2. per channel ``μ_c``, ``σ_c``: mean and (population) std of ``F_min`` over its positions;
3. every ``F_i`` normalized: ``(F_i - μ) / σ`` (a channel with ``σ_c = 0`` is only centred);
4. every normalized map bilinearly resized to ``h_0 × w_0`` (``align_corners=False``, no
   antialiasing, as ``F.interpolate``'s plain bilinear: the paper says "bilinearly interpolate");
5. the variance across the S scales at every position and channel, unbiased (divisor S − 1), so
   ranges with different numbers of resolutions are comparable (the population variance would
   grow with S for the same per-scale noise);
6. the mean over positions and channels.

A batch is measured image by image (statistics of step 2 are each image's own) and the result
averaged over images.

Exactness: bilinear shrinking with ``align_corners=False`` reproduces a function that is linear
in the normalized pixel-centre coordinates ``((j + 0.5) / w, (i + 0.5) / h)`` exactly (every
output sample lies between two input centres, never past the border), so features that are
*the same linear function of image position at every resolution* score exactly 0, as do features
constant over space. Any other smooth function sampled per grid scores slightly above 0.

Ranges (Table 2's "fine" and "coarse" columns, see :func:`scale_ranges`): *coarse* is the
smallest resolution and its integer multiples, the only sizes k×k tiling can reach (Table 2
reports tiling for the coarse range only, "N/A" for fine); *fine* is the resolutions within one
octave of the smallest (``r ≤ 2·r_min``), small steps tiling cannot make. With the default
256, 384, 512, 768, 1024: fine = 256, 384, 512 and coarse = 256, 512, 768, 1024.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def scale_variance(features: Sequence[torch.Tensor], antialias: bool = False) -> torch.Tensor:
    """The A.5 measure per image: ``features[s] [B, h_s, w_s, C]`` (the same B images at S ≥ 2
    resolutions) → ``[B]`` float64."""
    if len(features) < 2:
        raise ValueError(f"scale variance needs features at 2 or more resolutions, got {len(features)}")
    batch, channels = features[0].shape[0], features[0].shape[-1]
    for f in features:
        if f.ndim != 4 or f.shape[0] != batch or f.shape[-1] != channels:
            raise ValueError(f"features must all be [B={batch}, h, w, C={channels}], got {tuple(f.shape)}")
    ref = min(features, key=lambda f: f.shape[1] * f.shape[2]).double()
    grid = tuple(ref.shape[1:3])
    mean = ref.mean(dim=(1, 2), keepdim=True)
    std = ref.std(dim=(1, 2), keepdim=True, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    resized = []
    for f in features:
        x = ((f.double() - mean) / std).permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != grid:
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False, antialias=antialias)
        resized.append(x)
    stacked = torch.stack(resized)  # [S, B, C, h0, w0]
    return stacked.var(dim=0, correction=1).mean(dim=(1, 2, 3))


def scale_ranges(resolutions: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """``{"fine": ..., "coarse": ..., "all": ...}``: the resolutions each Table 2 column measures
    (see the module docstring); a range with fewer than 2 resolutions cannot be measured."""
    rs = tuple(sorted({int(r) for r in resolutions}))
    if not rs:
        raise ValueError("no resolutions given")
    base = rs[0]
    return {
        "fine": tuple(r for r in rs if r <= 2 * base),
        "coarse": tuple(r for r in rs if r % base == 0),
        "all": rs,
    }


# ---- tiling (paper §4.1.2, A.1.4): high resolution emulated by k×k tiles at the base size ----


def split_tiles(images: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, 3, k·s, k·s]`` → ``[B·k², 3, s, s]``, tiles of each image in row-major order."""
    b, c, height, width = images.shape
    if height % k or width % k:
        raise ValueError(f"a {height}x{width} image does not split into {k}x{k} equal tiles")
    th, tw = height // k, width // k
    tiles = images.reshape(b, c, k, th, k, tw).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(b * k * k, c, th, tw)


def stitch_tiles(features: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`split_tiles` on feature grids: ``[B·k², h, w, C]`` → ``[B, k·h, k·w, C]``."""
    n, h, w, c = features.shape
    if n % (k * k):
        raise ValueError(f"{n} tile feature maps are not a whole number of {k}x{k} tilings")
    x = features.reshape(n // (k * k), k, k, h, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n // (k * k), k * h, k * w, c)


def tiled_features(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, k: int) -> torch.Tensor:
    """Features of ``images [B, 3, k·s, k·s]`` by running ``encode`` (``[N, 3, s, s]`` →
    ``[N, h, w, C]``) on each of the k×k tiles and stitching the grids back together."""
    if k == 1:
        return encode(images)
    return stitch_tiles(encode(split_tiles(images, k)), k)
