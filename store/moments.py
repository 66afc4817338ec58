"""Streaming first and second moments in float64: (count, mean, M2), merged exactly.

PHI-S needs the mean and covariance of every target key's features over the whole store.
Featurize accumulates one :class:`Moments` per (tar, target key) and stores it; fit-phis merges
them with Chan et al.'s parallel formula. Working with centred M2 = Σ (x - mean)(x - mean)ᵀ
instead of Σ x xᵀ avoids the cancellation that ruins covariances of features with a large mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    """``count`` samples with ``mean [C]`` and centred second moment ``m2 [C, C]`` (float64)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> Moments:
        return cls(0, np.zeros(channels, np.float64), np.zeros((channels, channels), np.float64))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of ``x [N, C]``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        xc = x - mean
        return cls(x.shape[0], mean, xc.T @ xc)

    def merge(self, other: Moments) -> Moments:
        """Chan's parallel update: the moments of the union of both sample sets."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def add(self, x: np.ndarray) -> Moments:
        """Merge a batch ``x [N, C]``."""
        return self.merge(Moments.of(x))

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``[C, C]``."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.count}")
        return self.m2 / (self.count - 1)


def merge_all(parts: list[Moments]) -> Moments:
    """Merge many partial moments (e.g. one per tar) pairwise, which keeps rounding balanced."""
    if not parts:
        raise ValueError("no moments to merge")
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]
