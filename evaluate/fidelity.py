"""Fidelity (paper eq. 2, Table 3): how much of a teacher's variance the student's prediction explains.

    F[X] = Var(teacher) / MSE(teacher, prediction)

``Var(teacher)`` is the mean over channels of each channel's variance over every sample and
position; ``MSE`` the mean squared error over every value. This is the paper's arithmetic
(Table 3: 27.263 / 3.719 = 7.331): a constant bias in the prediction counts as error. F = 1 for
predicting the mean, F → ∞ for a perfect prediction. Also reported, labelled as such: the
*variance ratio* Σ Var(t) / Σ Var(t − p), which ignores a constant bias. Both are invariant
under PHI-S (a rotation and one scale), so they are computed in the teacher's space only;
and, labelled as such, the *all-element* F: Var over every value of the teacher's features
(one grand mean, as NVlabs/RADIO's ``examples/mode_switching.py`` takes ``Var(teacher)``) / MSE,
for comparing with RADIO's tools. It also counts the spread of the channel means, so features
with offset channel means get a far larger value than F (issue 23: 39.6 against 5.96). F is
PHI-S-invariant; the all-element F is not (PHI-S centres every channel).
the MSE is also given in the normalized (PHI-S) space, the loss's. Table 3 summarizes keys by
their geometric mean.

:func:`key_fidelity` takes all samples at once; :class:`FidelityAccumulator` gives the same
numbers batch by batch (per-channel moments merged with Chan's formula in float64), for
evaluations too large to hold in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _total_variance(x: torch.Tensor) -> float:
    """Sum over channels of the per-channel variance of ``x [..., C]`` (population variance)."""
    flat = x.reshape(-1, x.shape[-1]).double()
    return float(flat.var(dim=0, unbiased=False).sum())


def _check(teacher: torch.Tensor, prediction: torch.Tensor) -> None:
    if teacher.shape != prediction.shape:
        raise ValueError(f"fidelity needs equal shapes, got {tuple(teacher.shape)} and {tuple(prediction.shape)}")


def fidelity(teacher: torch.Tensor, prediction: torch.Tensor) -> float:
    """F = Var(teacher) / MSE for ``[..., C]`` tensors of the same shape (the paper's)."""
    _check(teacher, prediction)
    err = mse(teacher, prediction)
    return math.inf if err == 0.0 else _total_variance(teacher) / teacher.shape[-1] / err


def variance_ratio(teacher: torch.Tensor, prediction: torch.Tensor) -> float:
    """Σ Var(teacher) / Σ Var(teacher − prediction): blind to a constant bias (not the paper's F)."""
    _check(teacher, prediction)
    err = _total_variance(teacher.double() - prediction.double())
    return math.inf if err == 0.0 else _total_variance(teacher) / err


def fidelity_all_elements(teacher: torch.Tensor, prediction: torch.Tensor) -> float:
    """Var over all values of ``teacher`` (population, about its grand mean) / MSE: RADIO's tools' F."""
    _check(teacher, prediction)
    err = mse(teacher, prediction)
    return math.inf if err == 0.0 else float(teacher.double().var(unbiased=False)) / err


def mse(teacher: torch.Tensor, prediction: torch.Tensor) -> float:
    return float(((teacher.double() - prediction.double()) ** 2).mean())


@dataclass(frozen=True)
class KeyFidelity:
    """One target key and stream: F (paper), the variance ratio, MSE in the teacher's and in
    normalized space, and F with the all-element variance (RADIO's tools)."""

    key: str
    stream: str
    fidelity: float
    variance_ratio: float
    mse: float
    mse_normalized: float
    fidelity_all_elements: float


def key_fidelity(key: str, stream: str, teacher: torch.Tensor, prediction: torch.Tensor, normalizer) -> KeyFidelity:
    """``teacher``/``prediction`` ``[..., C]`` in the teacher's space; ``normalizer`` maps to normalized space."""
    acc = FidelityAccumulator(key, stream, normalizer)
    acc.add(teacher, prediction)
    return acc.result()


class ChannelMoments:
    """Streaming per-channel count, mean and centred sum of squares of ``[..., C]`` tensors
    (float64, merged with Chan's parallel formula); the diagonal of :class:`radio.store.moments.Moments`."""

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).double()
        n = flat.shape[0]
        if n == 0:
            return
        mean = flat.mean(dim=0)
        m2 = ((flat - mean) ** 2).sum(dim=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        assert self.m2 is not None  # set together with mean
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def total_variance(self) -> float:
        """Sum over channels of the population variance (as :func:`fidelity` uses)."""
        if self.m2 is None:
            raise ValueError("no samples")
        return float(self.m2.sum() / self.count)

    @property
    def element_variance(self) -> float:
        """Population variance over every value, about the grand mean: the channels' variances
        plus the spread of their means, ``(Σ_c M2_c + n Σ_c (μ_c − μ̄)²) / (n C)``."""
        if self.m2 is None or self.mean is None:
            raise ValueError("no samples")
        spread = float(((self.mean - self.mean.mean()) ** 2).sum())
        return (float(self.m2.sum()) + self.count * spread) / (self.count * len(self.mean))


class FidelityAccumulator:
    """:func:`key_fidelity` over batches: ``add(teacher, prediction)`` per batch, then :meth:`result`."""

    def __init__(self, key: str, stream: str, normalizer):
        self.key, self.stream, self.normalizer = key, stream, normalizer
        self._teacher, self._error = ChannelMoments(), ChannelMoments()
        self._sse = self._sse_n = 0.0
        self._values = 0

    def add(self, teacher: torch.Tensor, prediction: torch.Tensor) -> None:
        """``teacher``/``prediction`` ``[..., C]`` in the teacher's space, equal shapes."""
        _check(teacher, prediction)
        t, p = teacher.double(), prediction.double()
        tn, pn = self.normalizer.normalize(t), self.normalizer.normalize(p)
        self._teacher.add(t)
        self._error.add(t - p)
        self._sse += float(((t - p) ** 2).sum())
        self._sse_n += float(((tn - pn) ** 2).sum())
        self._values += t.numel()

    def result(self) -> KeyFidelity:
        mse, err_var = self._sse / self._values, self._error.total_variance
        assert self._teacher.mean is not None  # _values > 0: add() has run
        channels = len(self._teacher.mean)
        f = math.inf if mse == 0.0 else self._teacher.total_variance / channels / mse
        ratio = math.inf if err_var == 0.0 else self._teacher.total_variance / err_var
        f_all = math.inf if mse == 0.0 else self._teacher.element_variance / mse
        return KeyFidelity(self.key, self.stream, f, ratio, mse, self._sse_n / self._values, f_all)


def geometric_mean(values: list[float]) -> float:
    """Table 3's summary row; ∞ if any value is ∞, 0 if any is 0."""
    if not values:
        raise ValueError("geometric mean of no values")
    if any(math.isinf(v) for v in values):
        return math.inf
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))
