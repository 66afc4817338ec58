"""The distillation loss (paper §3, Table A8): per target key, summary cosine + feature MSE.

Features are compared in the normalized (PHI-S) space, where every teacher's targets have unit
channel variance, so equal weights mean balanced teachers. Summaries are compared by cosine in
the teacher's own space (a direction loss: what zero-shot classification and kNN use).

The student's adaptor features are resized to the target grid when they differ (bilinear,
antialiased when shrinking), except for keys whose grid must match exactly (SAM mosaics:
interpolating SAM features ruins them, paper §4.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from radio.errors import RadioError


@dataclass(frozen=True)
class KeyTarget:
    """A target key as one partition trains it."""

    key: str
    teacher: str  # the adaptor that predicts it
    grid: tuple[int, int]
    exact_grid: bool  # never interpolate (SAM)
    summary: bool
    weight_summary: float = 1.0
    weight_features: float = 1.0
    sizes: tuple[int, ...] | None = None  # stochastic resolutions: the input sizes it trains at (None: all)
    margin: int = 0  # the key's cached shift margin (its stored grid is grid + 2·margin; distill/shift.py)


def keys_at(targets: Sequence[KeyTarget], size: int) -> list[KeyTarget]:
    """The keys of a partition that train at input ``size`` (stochastic resolutions skip exact
    keys at sizes their grid does not fit)."""
    return [t for t in targets if t.sizes is None or size in t.sizes]


class GridMismatch(RadioError):
    """A key whose grid must match the student's does not."""


def align_features(pred: torch.Tensor, grid: tuple[int, int], exact: bool, key: str = "") -> torch.Tensor:
    """Student features ``[B, h, w, C]`` → ``[B, H, W, C]`` on the target grid (float32)."""
    h, w = pred.shape[1:3]
    if (h, w) == tuple(grid):
        return pred.float()
    if exact:
        raise GridMismatch(
            f"{key}: student grid {h}x{w} != target grid {grid[0]}x{grid[1]} (SAM targets are never interpolated)"
        )
    shrink = grid[0] < h or grid[1] < w
    x = pred.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False, antialias=shrink)
    return x.permute(0, 2, 3, 1)


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` over the batch, for ``[B, C]`` tensors."""
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


class DistillLoss(nn.Module):
    """Losses of one step: ``{"RES:KEY/features", "RES:KEY/summary", ..., "total"}``.

    ``normalizers`` maps each teacher to its feature :class:`~radio.store.normalizers.Normalizer`,
    fitted over all that teacher's keys: one adaptor head, one target space, at every resolution.
    Keys in ``prenormalized`` (compact keys, decoded straight into PHI-S space) skip ``normalize``.

    ``total = Σ_p w_p · Σ_k (key losses of partition p)``, each key loss a mean over its
    partition's batch; ``partition_weights`` gives ``w_p`` (default 1 each: the config's
    ``equal``, see ``StageConfig.partition_weight_values``). The per-key entries are unweighted.
    """

    def __init__(
        self,
        partitions: list[tuple[int, list[KeyTarget]]],
        normalizers: Mapping[str, nn.Module],
        prenormalized: frozenset[str] = frozenset(),
        partition_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.partitions = partitions
        self.normalizers = nn.ModuleDict(normalizers)
        self.prenormalized = frozenset(prenormalized)
        weights = tuple(float(w) for w in partition_weights) if partition_weights is not None else None
        if weights is not None and len(weights) != len(partitions):
            raise ValueError(f"{len(weights)} partition weights for {len(partitions)} partitions")
        self.partition_weights = weights or (1.0,) * len(partitions)

    def forward(
        self, outputs: list, batches: list[dict], sizes: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``outputs[p]`` is the student's output on ``batches[p]["image"]`` of partition ``p``.
        ``sizes[p]``: the input side partition ``p`` drew this step (stochastic resolutions): it
        names the losses, and keys whose ``sizes`` do not hold it sit the step out."""
        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=batches[0]["image"].device)
        for p, ((resolution, keys), out, batch, w_p) in enumerate(
            zip(self.partitions, outputs, batches, self.partition_weights)
        ):
            resolution = sizes[p] if sizes is not None else resolution
            for t in keys_at(keys, resolution):
                adaptor = out.adaptors[t.teacher]
                target = batch["targets"][t.key]
                pred = align_features(adaptor.features, t.grid, t.exact_grid, t.key)
                feats = target["features"].float()
                normed = feats if t.key in self.prenormalized else self.normalizers[t.teacher].normalize(feats)
                loss_f = F.mse_loss(pred, normed)
                losses[f"{resolution}:{t.key}/features"] = loss_f
                total = total + w_p * t.weight_features * loss_f
                if t.summary:
                    loss_s = cosine_distance(adaptor.summary, target["summary"])
                    losses[f"{resolution}:{t.key}/summary"] = loss_s
                    total = total + w_p * t.weight_summary * loss_s
        losses["total"] = total
        return losses
