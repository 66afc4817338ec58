"""Target normalizers in the store: `radio fit-phis` writes them, the trainer and evaluation load them.

Per target key and stream (``features``, ``summary``) the store holds, beside the key::

    targets/KEY/phis/STREAM/{mean [C], transform [C, C], inverse [C, C], eigenvalues [C], std [C]}

(float64, plain Zarr arrays) with attributes ``phi``, ``count``, ``tars`` and ``fingerprint`` (of the
merged moments they came from). :class:`Normalizer` applies one of the config's normalizations:
``phis`` (the paper's), ``standardize`` (per-channel mean/std, the baseline of Table 3) or ``none``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .hadamard import describe
from .layout import FeatureStore, StoreError
from .moments import Moments, merge_all
from .phis import PhiS, fit_phis

MODES = ("phis", "standardize", "none")


def streams_of(store: FeatureStore, key: str) -> list[str]:
    return ["features", "summary"] if store.target(key).summary_dim else ["features"]


def moments_fingerprint(m: Moments) -> str:
    h = hashlib.sha256()
    h.update(np.int64(m.count).tobytes())
    h.update(np.ascontiguousarray(m.mean).tobytes())
    h.update(np.ascontiguousarray(m.m2).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FitReport:
    key: str
    stream: str
    tars: int
    count: int  # vectors the moments cover (rows × tokens for features)
    phis: PhiS
    hadamard: str
    unchanged: bool  # the stored normalizer already came from these moments


def fit_store(
    store: FeatureStore, keys: list[str] | None = None, allow_partial: bool = False, max_tars: int | None = None
) -> list[FitReport]:
    """Fit PHI-S for every stream of ``keys`` (default: all) from the store's moments (of at most
    ``max_tars`` evenly spaced tars); idempotent."""
    keys = keys or store.target_keys
    for key in keys:
        store.target(key)  # unknown key → StoreError listing what the store has
        done = store.completed(key)
        if not done.all() and not allow_partial:
            raise StoreError(
                f"{key}: featurize is incomplete ({int(done.sum())} of {len(done)} tars); "
                "finish `radio featurize` or pass --allow-partial"
            )
    reports = []
    for key in keys:
        for stream in streams_of(store, key):
            parts = store.moments(key, stream, max_tars)
            merged = merge_all(parts) if parts else Moments(0, np.zeros(0), np.zeros((0, 0)))
            if merged.count < 2:
                raise StoreError(f"{key}: {stream} moments cover {merged.count} vectors; PHI-S needs at least 2")
            fp = moments_fingerprint(merged)
            group = _phis_group(store, key, stream)
            unchanged = group is not None and group.attrs.get("fingerprint") == fp
            phis = load_phis(store, key, stream) if unchanged else fit_phis(merged)
            if not unchanged:
                _write_phis(store, key, stream, phis, merged.count, len(parts), fp)
                # Which tars it came from (provenance of compact targets written in its space).
                _phis_group(store, key, stream).attrs["tar_indices"] = store.moment_tars(key, max_tars).tolist()
            reports.append(FitReport(key, stream, len(parts), merged.count, phis, describe(len(phis.mean)), unchanged))
    return reports


def _phis_group(store: FeatureStore, key: str, stream: str):
    g = store.root["targets"][key]
    return g[f"phis/{stream}"] if "phis" in g and stream in g["phis"] else None


def _write_phis(store: FeatureStore, key: str, stream: str, p: PhiS, count: int, tars: int, fp: str) -> None:
    g = store.root["targets"][key].require_group("phis").require_group(stream)
    for name in ("mean", "transform", "inverse", "eigenvalues", "std"):
        value = getattr(p, name)
        g.create_array(name, shape=value.shape, dtype="float64", chunks=value.shape, overwrite=True, fill_value=0)[...] = value
    # Attributes last: a fingerprint names arrays that are fully written.
    g.attrs.update({"phi": p.phi, "count": count, "tars": tars, "fingerprint": fp, "hadamard": describe(len(p.mean))})


def load_phis(store: FeatureStore, key: str, stream: str = "features") -> PhiS:
    g = _phis_group(store, key, stream)
    if g is None or "fingerprint" not in g.attrs:
        raise StoreError(f"{key}: no PHI-S for {stream}; run `radio fit-phis`")
    arrays = {n: g[n][...] for n in ("mean", "transform", "inverse", "eigenvalues", "std")}
    return PhiS(phi=float(g.attrs["phi"]), **arrays)


class Normalizer(nn.Module):
    """Normalize targets ``[..., C]`` for the loss, and map predictions back to the teacher's space.

    ``phis``: x' = (x - μ) Wᵀ with W = (1/φ) H Uᵀ; ``standardize``: x' = (x - μ) / σ per channel;
    ``none``: identity. Works on any device and dtype (computes in at least float32, returns the
    input's dtype). Its buffers travel with a model's state dict, so an export carries them.
    """

    def __init__(self, mode: str, mean: np.ndarray, matrix: np.ndarray | None = None,
                 inverse: np.ndarray | None = None, std: np.ndarray | None = None):  # fmt: skip
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown normalization {mode!r} (known: {', '.join(MODES)})")
        self.mode = mode
        c = len(mean)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        if mode == "standardize":
            safe = np.where(std > 0, std, 1.0)  # a constant channel stays as it is
            matrix, inverse = np.diag(1.0 / safe), np.diag(safe)
        elif mode == "none":
            matrix = inverse = np.eye(c)
        self.register_buffer("matrix", torch.as_tensor(matrix, dtype=torch.float64))
        self.register_buffer("inverse", torch.as_tensor(inverse, dtype=torch.float64))

    @classmethod
    def from_phis(cls, mode: str, p: PhiS) -> Normalizer:
        return cls(mode, p.mean, p.transform, p.inverse, p.std)

    @classmethod
    def from_store(cls, store: FeatureStore, key: str, stream: str = "features", mode: str = "phis") -> Normalizer:
        return cls.from_phis(mode, load_phis(store, key, stream))

    @staticmethod
    def _work_dtype(x: torch.Tensor) -> torch.dtype:
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        d = self._work_dtype(x)
        y = (x.to(d) - self.mean.to(x.device, d)) @ self.matrix.to(x.device, d).T
        return y.to(x.dtype)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return y
        d = self._work_dtype(y)
        x = y.to(d) @ self.inverse.to(y.device, d).T + self.mean.to(y.device, d)
        return x.to(y.dtype)
