"""Fidelity (paper eq. 2): how much of a teacher's variance the student's prediction explains.

    F[X] = Var(teacher) / Var(teacher - prediction)

Variances are per channel over every sample and position, summed over channels (so F is the
ratio of the traces of the two covariances). F = 1 for predicting the mean, F → ∞ for a perfect
prediction. Measured in the teacher's own space and in the normalized (PHI-S) space; Table 3
summarizes keys by their geometric mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _total_variance(x: torch.Tensor) -> float:
    """Sum over channels of the per-channel variance of ``x [..., C]`` (population variance)."""
    flat = x.reshape(-1, x.shape[-1]).double()
    return float(flat.var(dim=0, unbiased=False).sum())


def fidelity(teacher: torch.Tensor, prediction: torch.Tensor) -> float:
    """F = Var(teacher) / Var(teacher − prediction) for ``[..., C]`` tensors of the same shape."""
    if teacher.shape != prediction.shape:
        raise ValueError(f"fidelity needs equal shapes, got {tuple(teacher.shape)} and {tuple(prediction.shape)}")
    err = _total_variance(teacher.double() - prediction.double())
    return math.inf if err == 0.0 else _total_variance(teacher) / err


def mse(teacher: torch.Tensor, prediction: torch.Tensor) -> float:
    return float(((teacher.double() - prediction.double()) ** 2).mean())


@dataclass(frozen=True)
class KeyFidelity:
    """One target key and stream: F and MSE in the teacher's space and in normalized space."""

    key: str
    stream: str
    fidelity: float
    fidelity_normalized: float
    mse: float
    mse_normalized: float


def key_fidelity(key: str, stream: str, teacher: torch.Tensor, prediction: torch.Tensor, normalizer) -> KeyFidelity:
    """``teacher``/``prediction`` ``[..., C]`` in the teacher's space; ``normalizer`` maps to normalized space."""
    tn, pn = normalizer.normalize(teacher.double()), normalizer.normalize(prediction.double())
    return KeyFidelity(key, stream, fidelity(teacher, prediction), fidelity(tn, pn), mse(teacher, prediction), mse(tn, pn))


def geometric_mean(values: list[float]) -> float:
    """Table 3's summary row; ∞ if any value is ∞, 0 if any is 0."""
    if not values:
        raise ValueError("geometric mean of no values")
    if any(math.isinf(v) for v in values):
        return math.inf
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))
