"""Compact target codecs: teacher features stored in PHI-S space at a fraction of the fp16 bytes.

After PHI-S (:mod:`.phis`) every channel of a key has unit variance, so one quantization scale
fits every channel. Three codecs, all one byte per stored value:

- ``int8``: ``q = round(clamp(y / s, -127, 127))`` with ``s = clip / 127`` (``clip`` in σ units,
  default 4): error variance ≈ s²/12 ≈ 8e-5 of the signal, clipping beyond 4σ is negligible.
- ``int8`` with rank ``R``: PHI-S space is ``y = H z`` with ``z = Uᵀ(x - μ)/φ`` the principal
  coefficients (variances ``λᵢ/φ²``, descending). Only ``z[:R] = H[:, :R]ᵀ y`` is stored, each
  coefficient with its own scale ``sᵢ = clip·√λᵢ/φ / 127``; decoding is ``y ≈ H[:, :R] (q·s)``.
  The dropped coefficients cost exactly their share of the spectrum, ``1 - Σᵢ<R λᵢ / Σ λ``.
- ``fp8``: ``(y / s)`` cast to float8 e4m3 (stored as its uint8 bit pattern), ``s = clip / 448``.

Pure functions on arrays and tensors; the store I/O is in :mod:`.compact`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from radio.errors import RadioError

from .hadamard import normalized_hadamard
from .phis import PhiS

CODECS = ("int8", "fp8")
FP8_MAX = 448.0  # largest finite float8 e4m3fn
DEFAULT_CLIP = 4.0


class CodecError(RadioError):
    """Codec parameters that cannot be used (bad rank, unknown codec, ...)."""


@dataclass(frozen=True)
class Codec:
    """A fitted codec for one stream of ``C`` channels storing ``K`` values per vector.

    ``scale [K]`` float32 (one value repeated for the per-key ``int8``/``fp8`` scale), ``basis
    [C, R]`` float32 PHI-S-space directions (rank codecs only; K = R), ``clip`` in σ units.
    """

    name: str
    scale: np.ndarray
    basis: np.ndarray | None
    clip: float

    @property
    def stored_channels(self) -> int:
        return len(self.scale)

    @property
    def rank(self) -> int | None:
        return None if self.basis is None else self.basis.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.name == "fp8" else np.int8)

    def describe(self) -> str:
        return f"{self.name}" + (f" rank {self.rank}" if self.rank else "") + f" clip {self.clip:g}σ"


def rank_for_variance(eigenvalues: np.ndarray, variance: float) -> int:
    """Smallest R whose leading eigenvalues hold at least ``variance`` of the total."""
    if not 0 < variance <= 1:
        raise CodecError(f"--variance {variance}: must be in (0, 1]")
    share = np.cumsum(eigenvalues) / max(float(eigenvalues.sum()), 1e-300)
    return int(min(len(eigenvalues), int(np.searchsorted(share, variance - 1e-12)) + 1))


def fit_codec(
    phis: PhiS, name: str = "int8", rank: int | None = None, variance: float | None = None, clip: float = DEFAULT_CLIP
) -> Codec:
    """The codec for a stream normalized by ``phis``; ``rank`` or ``variance`` selects rank truncation."""
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    if clip <= 0:
        raise CodecError(f"--clip {clip}: must be > 0")
    c = len(phis.mean)
    if rank is not None and variance is not None:
        raise CodecError("pass --rank or --variance, not both")
    if variance is not None:
        rank = rank_for_variance(phis.eigenvalues, variance)
    top = FP8_MAX if name == "fp8" else 127.0
    if rank is None:
        return Codec(name, np.full(c, clip / top, np.float32), None, clip)
    if not 1 <= rank <= c:
        raise CodecError(f"--rank {rank}: must be in 1..{c}")
    # Columns of H are PHI-S space's principal directions; coefficient i has variance λᵢ/φ².
    basis = normalized_hadamard(c)[:, :rank].astype(np.float32)
    sigma = np.sqrt(np.clip(phis.eigenvalues[:rank], 0.0, None)) / phis.phi
    scale = np.maximum(clip * sigma / top, 1e-12).astype(np.float32)  # a zero eigenvalue stores zeros
    return Codec(name, scale, basis, clip)


def encode(codec: Codec, y: torch.Tensor) -> torch.Tensor:
    """PHI-S-space ``y [..., C]`` → stored ``[..., K]`` int8 (``int8``) or uint8 (``fp8`` bits)."""
    y = y.float()
    if codec.basis is not None:
        y = y @ torch.as_tensor(codec.basis, device=y.device)
    v = y / torch.as_tensor(codec.scale, device=y.device)
    if codec.name == "fp8":
        return v.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    return v.round().clamp(-127, 127).to(torch.int8)


def decode_on_device(q: torch.Tensor, scale: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Stored ``q [..., K]`` (int8, or uint8 fp8 bits) → PHI-S-space float32 ``[..., C]``.

    Runs where ``q`` is (move the one-byte tensor to the GPU first, then decode: the host→device
    copy carries a quarter of fp32's bytes). ``scale [K]`` and ``basis [C, R]`` are float32 on
    the same device.
    """
    v = q.view(torch.float8_e4m3fn).float() if q.dtype == torch.uint8 else q.float()
    v = v * scale
    return v @ basis.T if basis is not None else v


def decode(codec: Codec, q: torch.Tensor) -> torch.Tensor:
    """:func:`decode_on_device` with the codec's parameters moved to ``q``'s device."""
    basis = None if codec.basis is None else torch.as_tensor(codec.basis, device=q.device)
    return decode_on_device(q, torch.as_tensor(codec.scale, device=q.device), basis)


def variance_retained(y: torch.Tensor, decoded: torch.Tensor) -> float:
    """``1 - MSE / Var`` in PHI-S space over vectors ``[..., C]`` (Var of ``y`` per channel, averaged)."""
    y, decoded = y.double().reshape(-1, y.shape[-1]), decoded.double().reshape(-1, y.shape[-1])
    mse = ((y - decoded) ** 2).mean()
    var = y.var(dim=0, unbiased=False).mean()
    return float(1.0 - mse / var) if var > 0 else 1.0
