"""Training-free correspondence: nearest-neighbour matching of dense features between two views.

Each view is resized so its long side is ``resolution`` unit pixels (both sides multiples of the
patch). For every ground-truth match ``(x0, y0) → (x1, y1)`` the feature of view 0 at ``(x0,
y0)`` (bilinear on the patch grid) is compared by cosine similarity with every patch of view 1;
the predicted point is the centre of the most similar patch, in view 1's original pixels. Its
distance to ``(x1, y1)`` is the end-point error; the score is recall at pixel thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import DenseBackbone
from .common import check_crop, resize_image, to_tensor
from .datasets import Pair, read_rgb
from .metrics import recall_at_thresholds

THRESHOLDS = (4.0, 8.0, 16.0, 32.0)


def long_side_size(h: int, w: int, long: int, unit: int) -> tuple[int, int]:
    s = long / max(h, w)
    return max(unit, round(h * s / unit) * unit), max(unit, round(w * s / unit) * unit)


def match_points(f0: torch.Tensor, f1: torch.Tensor, points: torch.Tensor, size0, size1, orig0, orig1) -> torch.Tensor:
    """Predicted view-1 points ``[N, 2]`` (x, y, original pixels) for view-0 ``points [N, 2]``.

    ``f0 [h0, w0, C]``, ``f1 [h1, w1, C]`` grids of the views resized to ``size0``/``size1``
    ``(H, W)`` from ``orig0``/``orig1``."""
    h0, w0, c = f0.shape
    h1, w1, _ = f1.shape
    # view-0 pixel centres → grid coordinates in [-1, 1] (align_corners=False: cell centres)
    gx = (points[:, 0] + 0.5) / orig0[1] * 2 - 1
    gy = (points[:, 1] + 0.5) / orig0[0] * 2 - 1
    grid = torch.stack([gx, gy], -1).view(1, 1, -1, 2).float()
    q = F.grid_sample(f0.permute(2, 0, 1)[None].float(), grid, mode="bilinear", align_corners=False)[0, :, 0].T
    sim = F.normalize(q, dim=-1) @ F.normalize(f1.reshape(-1, c).float(), dim=-1).T
    idx = sim.argmax(1)
    row, col = idx // w1, idx % w1
    x = (col.double() + 0.5) / w1 * orig1[1] - 0.5
    y = (row.double() + 0.5) / h1 * orig1[0] - 0.5
    return torch.stack([x, y], -1)


@dataclass
class CorrespondenceScore:
    model: str
    kind: str
    recall: dict[str, float]  # threshold (pixels) → recall over all pairs' matches
    per_pair: dict[str, dict[str, float]]
    matches: int


@torch.no_grad()
def evaluate(
    backbone: DenseBackbone,
    kind: str,
    pairs: Sequence[Pair],
    resolution: int,
    thresholds: Sequence[float] = THRESHOLDS,
    max_matches: int = 2000,
    seed: int = 0,
) -> CorrespondenceScore:
    """Recall at ``thresholds`` of NN matching on ``pairs`` (up to ``max_matches`` per pair, seeded)."""
    check_crop(resolution, backbone.unit, "--resolution")
    rng = np.random.default_rng(seed)
    errors, per_pair = [], {}
    for pair in pairs:
        m = pair.matches
        if len(m) > max_matches:
            m = m[np.sort(rng.choice(len(m), max_matches, replace=False))]
        im0, im1 = to_tensor(read_rgb(pair.im0)), to_tensor(read_rgb(pair.im1))
        o0, o1 = (im0.shape[1], im0.shape[2]), (im1.shape[1], im1.shape[2])
        s0, s1 = (
            long_side_size(o0[0], o0[1], resolution, backbone.unit),
            long_side_size(o1[0], o1[1], resolution, backbone.unit),
        )
        f0 = backbone.layers(resize_image(im0, s0)[None], [backbone.depth - 1])[0][0].cpu()
        f1 = backbone.layers(resize_image(im1, s1)[None], [backbone.depth - 1])[0][0].cpu()
        pts = torch.from_numpy(m).double()
        pred = match_points(f0, f1, pts[:, :2], s0, s1, o0, o1)
        e = (pred - pts[:, 2:]).norm(dim=-1)
        errors.append(e)
        per_pair[pair.name] = {str(t): v for t, v in recall_at_thresholds(e, thresholds).items()}
    all_e = torch.cat(errors)
    recall = {str(t): v for t, v in recall_at_thresholds(all_e, thresholds).items()}
    return CorrespondenceScore(backbone.name, kind, recall, per_pair, int(all_e.numel()))
