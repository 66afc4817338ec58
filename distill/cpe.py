"""CPE: cropped position embedding (AM-RADIO sec. 3; RADIO's ``vit_patch_generator``).

One learned grid ``[1, G, G, D]`` covers the largest input the student supports
(``G = cpe_max_size / patch``: 128 tokens per side at 2048 px, patch 16).

Training: every image gets its own random crop of the grid, bilinearly resampled to the
image's token grid; with probability ``pos_dropout`` (RADIO: 0.1) an image gets none at all.
The student then never sees a fixed map from resolution to position
embedding, which is what causes RADIO's "mode switching" between low and high resolution.

Inference: deterministic *resize-then-crop*: the whole grid is resized to a square of side
``max(h, w)`` and the top-left ``h x w`` window is kept, so a non-square input sees the same
embeddings as the top-left part of the square input that contains it.

Coordinates. A crop is ``(x0, y0, width, height)`` as fractions of the grid measured between
token *centers* (``0`` = first token, ``1`` = last token), the convention of
``align_corners=True``. All resampling runs in float32 whatever the autocast dtype.

Randomness. Crops are drawn from ``generator`` when one is passed, else from the global torch
RNG of the CPU (seeded by ``torch.manual_seed``). The numbers are drawn on the generator's
device (CPU for the global RNG) and then moved, so a fixed seed gives the same crops on every
device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SIDE_RANGE = (math.sqrt(0.1), 1.0)  # crop side s as a fraction of the grid, drawn uniformly (RADIO)
ASPECT_RANGE = (3 / 4, 4 / 3)  # aspect factor a, drawn log-uniformly (RADIO): width = s·a, height = s/a


def draw_crops(batch: int, generator: torch.Generator | None = None, pos_dropout: float = 0.0) -> torch.Tensor:
    """Random crop boxes ``[B, 5]`` = ``(x0, y0, width, height, keep)``, fractions of the grid.

    As RADIO's ``vit_patch_generator``: side ``s ~ U[sqrt(0.1), 1]`` (so the unclamped area
    s² covers 10-100 % of the grid, mean 0.47) and ``a = exp(U[log 3/4, log 4/3])`` give
    ``width = s·a``, ``height = s/a``, each clamped to the grid (mean area 0.457). The position
    is uniform over the places where the box fits inside the grid. ``keep`` is 0 for a sample
    whose whole position encoding is dropped (RADIO's ``pos_dropout``: probability
    ``pos_dropout``), else 1.

    Drawn on ``generator``'s device (CPU for the global RNG) in float32.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(batch, 5, generator=generator, device=device, dtype=torch.float32)
    side = SIDE_RANGE[0] + (SIDE_RANGE[1] - SIDE_RANGE[0]) * u[:, 0]
    log_lo, log_hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    width = (side * aspect).clamp(max=1.0)
    height = (side / aspect).clamp(max=1.0)
    x0 = u[:, 2] * (1.0 - width)
    y0 = u[:, 3] * (1.0 - height)
    keep = (u[:, 4] >= pos_dropout).float()
    return torch.stack([x0, y0, width, height, keep], dim=1)


def resample_crops(grid: torch.Tensor, crops: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resample of one crop per image: grid ``[1, G, G, D]``, crops ``[B, 4]`` (or
    ``[B, 5]`` whose last column is the position-dropout ``keep`` factor) → ``[B, h*w, D]`` in float32.

    Token ``(i, j)`` of image ``b`` samples the grid at ``x0 + width * j/(w-1)``,
    ``y0 + height * i/(h-1)`` (``align_corners=True``; a one-token side samples at ``x0``/``y0``).
    """
    crops = crops.to(device=grid.device, dtype=torch.float32)
    batch, dim = crops.shape[0], grid.shape[-1]
    steps_x = torch.linspace(0.0, 1.0, w, device=grid.device)
    steps_y = torch.linspace(0.0, 1.0, h, device=grid.device)
    x = crops[:, 0:1] + crops[:, 2:3] * steps_x  # [B, w] in [0, 1]
    y = crops[:, 1:2] + crops[:, 3:4] * steps_y  # [B, h]
    # grid_sample wants (x, y) in [-1, 1], last dim x first.
    coords = torch.stack(
        [(2 * x - 1)[:, None, :].expand(batch, h, w), (2 * y - 1)[:, :, None].expand(batch, h, w)], dim=-1
    )  # [B, h, w, 2]
    # Stack every image's sample points along the height of ONE sampling grid against the
    # single (un-expanded) table: grid_sample's backward then allocates one [D, G, G] gradient
    # instead of B of them (2.7 GB per step for ViT-H at batch 32).
    table = grid.float().permute(0, 3, 1, 2)  # [1, D, G, G]
    out = F.grid_sample(
        table, coords.reshape(1, batch * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    )  # [1, D, B*h, w]
    out = out.reshape(dim, batch, h * w).permute(1, 2, 0)  # [B, h*w, D]
    return out * crops[:, 4, None, None] if crops.shape[1] == 5 else out


def resize_then_crop(grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inference CPE: grid ``[1, G, G, D]`` → ``[1, h*w, D]`` in float32.

    The grid is bilinearly resized (``align_corners=True``) to ``M x M``, ``M = max(h, w)``,
    and the top-left ``h x w`` window is kept. At ``M == G`` the grid is used as it is.
    """
    side = max(h, w)
    table = grid.float().permute(0, 3, 1, 2)  # [1, D, G, G]
    if side != table.shape[-1]:
        table = F.interpolate(table, size=(side, side), mode="bilinear", align_corners=True)
    window = table[:, :, :h, :w]  # [1, D, h, w]
    return window.flatten(2).transpose(1, 2)  # [1, h*w, D]


class CPE(nn.Module):
    """Cropped position embedding: ``forward(h, w, batch)`` → ``[B, h*w, D]`` (float32).

    ``grid`` is ``[1, G, G, D]`` with ``G = max_size / patch``, initialised ``N(0, 1/D)``.
    Training mode draws one crop per image (see :func:`draw_crops`) and zeroes the whole
    encoding of a ``pos_dropout`` share of the images; eval mode is
    :func:`resize_then_crop`, the same for every image.
    """

    def __init__(self, dim: int, max_size: int = 2048, patch: int = 16, pos_dropout: float = 0.0):
        super().__init__()
        self.pos_dropout = pos_dropout  # training only: share of samples that get no position encoding
        if max_size % patch:
            raise ValueError(f"cpe_max_size {max_size} is not a multiple of the patch size {patch}")
        self.patch = patch
        self.grid_size = max_size // patch
        self.grid = nn.Parameter(torch.randn(1, self.grid_size, self.grid_size, dim) * dim**-0.5)

    def forward(
        self, h: int, w: int, batch: int, generator: torch.Generator | None = None, crops: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Position embeddings for ``batch`` images of ``h x w`` tokens: ``[B, h*w, D]``.

        ``crops [B, 4 or 5]`` (training only) gives the crop boxes instead of drawing them: the trainer
        draws a whole global batch's boxes and hands each DDP rank its slice, so a step computes the
        same thing whatever the number of ranks.
        """
        if self.training:
            crops = draw_crops(batch, generator, self.pos_dropout) if crops is None else crops
            return resample_crops(self.grid, crops, h, w)
        return resize_then_crop(self.grid, h, w).expand(batch, -1, -1)
