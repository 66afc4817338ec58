"""PHI-S (paper §4.4, eq. 1): PCA-Hadamard isotropic standardization of a teacher's targets.

With the features' mean μ and covariance Σ = U Λ Uᵀ (eigenvalues clamped at 0), the normalized
Hadamard matrix H of order C and φ = sqrt(mean(Λ)):

    x' = (1/φ) H Uᵀ (x - μ)          x = φ U Hᵀ x' + μ

Uᵀ rotates onto the principal axes, where variances are the unequal eigenvalues; H then spreads
every axis evenly over all channels (each row of H has entries ±1/√C), so every output channel
gets variance mean(Λ), and 1/φ makes that 1. It is a rotation and one scale, not whitening: the
eigenvalues keep their ratios, so a teacher's geometry (distances up to a constant) is preserved
while its loss contribution is balanced against the other teachers'.

Pure functions on arrays; the store I/O is in :mod:`.normalizers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hadamard import normalized_hadamard
from .moments import Moments


@dataclass(frozen=True)
class PhiS:
    """A fitted PHI-S transform for ``C`` channels (all float64).

    ``mean [C]``, ``transform [C, C]`` = (1/φ) H Uᵀ, ``inverse [C, C]`` = φ U Hᵀ,
    ``eigenvalues [C]`` descending, ``phi`` = sqrt(mean eigenvalue), ``std [C]`` per-channel
    standard deviation (for the ``standardize`` baseline).
    """

    mean: np.ndarray
    transform: np.ndarray
    inverse: np.ndarray
    eigenvalues: np.ndarray
    phi: float
    std: np.ndarray

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``x [..., C]`` → PHI-S space."""
        return (x - self.mean) @ self.transform.T

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        return y @ self.inverse.T + self.mean

    def variance_share(self, top: int) -> float:
        """Fraction of the total variance in the ``top`` largest principal components."""
        total = self.eigenvalues.sum()
        return float(self.eigenvalues[:top].sum() / total) if total > 0 else 0.0


def fit_phis(m: Moments) -> PhiS:
    """PHI-S from merged moments (count ≥ 2)."""
    cov = m.covariance
    cov = (cov + cov.T) / 2  # exact symmetry for eigh
    eigenvalues, u = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, u = np.clip(eigenvalues[order], 0.0, None), u[:, order]
    phi = float(np.sqrt(eigenvalues.mean()))
    if phi == 0.0:
        raise ValueError("PHI-S needs features that vary: every eigenvalue is 0")
    h = normalized_hadamard(cov.shape[0])
    transform = (h @ u.T) / phi
    inverse = phi * (u @ h.T)
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return PhiS(m.mean.copy(), transform, inverse, eigenvalues, phi, std)
