"""Target normalizers in the store: `radio fit-phis` writes them, the trainer and evaluation load them.

One normalizer per **teacher** and stream (``features``, ``summary``), fitted from the merged
moments of all that teacher's target keys: the student has one adaptor head per teacher, so
every key of a teacher must be expressed in the same space. (Separate per-key fits put
``sam@432`` and ``sam@1024`` in different bases: ``eigh`` flips eigenvector signs and rotates
within near-equal eigenvalues from one fit to the next.) RADIO does the same: one PHI-S and one
head per teacher.

Normalizers are **immutable and addressed by fingerprint** (of the merged moments): compact
targets (:mod:`.compact`) are int8 values in one normalizer's space, so a refit must never
replace the arrays they are expressed in. The store holds, at its root::

    normalizers/TEACHER/STREAM/                  attribute ``current``: the fingerprint in use (written last)
        FINGERPRINT/{mean [C], transform [C, C], inverse [C, C], eigenvalues [C], std [C]}

(float64, plain Zarr arrays) with attributes ``phi``, ``count``, ``keys`` (the target keys
merged), ``key_weighting`` (how they were merged, :data:`KEY_WEIGHTINGS`; absent in stores written
before it: ``count``), ``tars`` (per key, the tar indices whose moments were merged), ``provenance`` (per key,
:func:`provenance_fingerprint` of the teacher output it was fitted on), ``hadamard`` and
``fingerprint``, all in one write after the arrays. Stores written before versioning hold one
normalizer in ``normalizers/TEACHER/STREAM/{arrays}`` with the attributes on that group; it is
read as the version its ``fingerprint`` names (and stays addressable after a refit).
:class:`Normalizer` applies one of the config's normalizations: ``phis`` (the paper's),
``standardize`` (per-channel mean/std, the baseline of Table 3) or ``none``.
:func:`normalizer_for` is the one way to get a teacher's (or a target key's, via its teacher).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checksums import CorruptError, create_array, read
from .hadamard import describe
from .layout import FeatureStore, StoreError
from .moments import Moments, merge_all
from .phis import PhiS, fit_phis
from .provenance import attrs_fingerprint

MODES = ("phis", "standardize", "none")
KEY_WEIGHTINGS = ("count", "equal")
"""How a teacher's keys merge into its one normalizer (the config's ``phis_key_weighting``), see :func:`merge_keys`."""


SPECTRA = "phis_spectra.png"  # fit-phis's eigenvalue plot, beside the store's arrays


def write_spectra(store: FeatureStore, png: bytes) -> str:
    """Write fit-phis's eigenvalue-spectra plot into the store (also an object-store URL); its address."""
    store.location.write_bytes(SPECTRA, png)
    return f"{str(store.path).rstrip('/')}/{SPECTRA}"


def streams_of(store: FeatureStore, key: str) -> list[str]:
    return ["features", "summary"] if store.target(key).summary_dim else ["features"]


def teacher_of(store: FeatureStore, key: str) -> str:
    """The teacher (config name) whose adaptor predicts ``key``, from its provenance; keys
    written without one fall back to the part before ``@``."""
    return str(store.target(key).attrs.get("teacher") or key.split("@")[0])


def teacher_keys(store: FeatureStore, teacher: str) -> list[str]:
    """Every target key of ``teacher`` in the store, sorted."""
    return [k for k in store.target_keys if teacher_of(store, k) == teacher]


def moments_fingerprint(m: Moments, key_weighting: str = "count") -> str:
    """The normalizer's address: of the merged moments, and of the key weighting unless it is
    ``count`` (so stores fitted before the weighting existed keep their fingerprints)."""
    h = hashlib.sha256()
    h.update(np.int64(m.count).tobytes())
    h.update(np.ascontiguousarray(m.mean).tobytes())
    h.update(np.ascontiguousarray(m.m2).tobytes())
    if key_weighting != "count":
        h.update(f"key_weighting={key_weighting}".encode())
    return h.hexdigest()[:16]


def merge_keys(per_key: list[list[Moments]], key_weighting: str = "count") -> Moments:
    """One teacher's moments from each key's per-tar moments ``per_key[k]``.

    ``count``: Chan's merge of every part, i.e. the moments of all the keys' vectors pooled, so a
    key weighs by its vector count (a 1024-px key of 4,096 tokens a row holds most of it).
    ``equal``: the moments of the mixture in which every key weighs 1/K, from the keys' own
    (count n_k, mean μ_k, unbiased covariance Σ_k)::

        μ = (1/K) Σ_k μ_k        Σ = (1/K) Σ_k [Σ_k + (μ_k − μ)(μ_k − μ)ᵀ]

    (each key's covariance taken about the merged mean μ), returned with count N = Σ_k n_k and
    M2 = (N − 1) Σ so that :attr:`Moments.covariance` is Σ exactly. A key's variance in the space
    fitted from it is then tr(T Σ_k Tᵀ)/C, and these average (with the mean offsets) to 1 over keys.
    """
    if key_weighting not in KEY_WEIGHTINGS:
        raise ValueError(f"unknown key weighting {key_weighting!r} (known: {', '.join(KEY_WEIGHTINGS)})")
    if key_weighting == "count":
        return merge_all([m for parts in per_key for m in parts])
    keys = [merge_all(parts) for parts in per_key]
    mean = np.mean([m.mean for m in keys], axis=0)
    cov = np.mean([m.covariance + np.outer(m.mean - mean, m.mean - mean) for m in keys], axis=0)
    count = sum(m.count for m in keys)
    return Moments(count, mean, cov * (count - 1))


def key_variance(phis: PhiS, m: Moments) -> float:
    """The mean per-channel variance of a key's vectors (moments ``m``, about their own mean) in
    the space ``phis`` normalizes to: tr(T Σ Tᵀ)/C; 1 for the keys a normalizer was fitted on alone."""
    t = phis.transform
    return float(np.einsum("ij,jk,ik->", t, m.covariance, t) / len(phis.mean))


def provenance_fingerprint(store: FeatureStore, key: str) -> str:
    """Of the teacher output ``key`` holds: its featurize provenance (teacher, weights, output
    scale, ...), without the ``compact`` entry `radio store compact` adds. Recorded per key at fit
    time, so featurize can tell whether a normalizer was fitted on the outputs it now writes."""
    return attrs_fingerprint(store.target(key).attrs)  # = TargetProvenance.fingerprint(), also for hand-made keys


@dataclass(frozen=True)
class KeySpectrum:
    """Diagnostics of one target key's own moments (not used for normalizing)."""

    key: str
    tars: int
    count: int
    phi: float
    eigenvalues: np.ndarray  # [C] descending

    def variance_share(self, top: int) -> float:
        total = self.eigenvalues.sum()
        return float(self.eigenvalues[:top].sum() / total) if total > 0 else 0.0


@dataclass(frozen=True)
class FitReport:
    teacher: str
    keys: tuple[str, ...]  # the target keys merged into this normalizer
    stream: str
    tars: int  # (key, tar) moments merged
    count: int  # vectors the moments cover (rows × tokens for features, over every key)
    phis: PhiS
    hadamard: str
    unchanged: bool  # the current normalizer already came from these moments
    spectra: tuple[KeySpectrum, ...]  # per key, diagnostics only
    fingerprint: str = ""  # of the merged moments: the normalizer's address in the store
    key_weighting: str = "count"  # how the keys were merged (see merge_keys)
    key_variances: tuple[float, ...] = ()  # per key (as in ``keys``), its variance in this normalizer's space


def _key_spectrum(key: str, parts: list[Moments], merged: Moments) -> KeySpectrum:
    cov = merged.covariance
    ev = np.clip(np.linalg.eigvalsh((cov + cov.T) / 2)[::-1], 0.0, None)
    return KeySpectrum(key, len(parts), merged.count, float(np.sqrt(ev.mean())), ev)


def fit_store(
    store: FeatureStore,
    keys: list[str] | None = None,
    allow_partial: bool = False,
    max_tars: int | None = None,
    key_weighting: str = "count",
) -> list[FitReport]:
    """Fit one PHI-S per teacher and stream from the merged moments (of at most ``max_tars``
    evenly spaced tars per key) of **all** the teacher's keys in the store, merged as
    ``key_weighting`` says (:func:`merge_keys`); ``keys`` (default: all) only chooses which
    teachers to fit. Idempotent: a normalizer whose moments and weighting did not change is left
    as it is; new ones add a normalizer and make it current (see the module docstring: the old
    one stays, compact targets may be expressed in it)."""
    if key_weighting not in KEY_WEIGHTINGS:
        raise StoreError(f"unknown PHI-S key weighting {key_weighting!r} (known: {', '.join(KEY_WEIGHTINGS)})")
    for key in keys or []:
        store.target(key)  # unknown key → StoreError listing what the store has
    teachers = sorted({teacher_of(store, k) for k in (keys or store.target_keys)})
    groups = {t: teacher_keys(store, t) for t in teachers}
    for key in (k for ks in groups.values() for k in ks):
        done = store.completed(key)
        if not done.all() and not allow_partial:
            raise StoreError(
                f"{key}: featurize is incomplete ({int(done.sum())} of {len(done)} tars); "
                "finish `radio featurize` or pass --allow-partial"
            )
    reports = []
    for teacher, tkeys in groups.items():
        provenance = {k: provenance_fingerprint(store, k) for k in tkeys}
        for stream in streams_of(store, tkeys[0]):
            per_key, own, spectra, tars = [], [], [], {}
            for key in tkeys:
                parts = store.moments(key, stream, max_tars)
                merged = merge_all(parts) if parts else Moments(0, np.zeros(0), np.zeros((0, 0)))
                if merged.count < 2:
                    raise StoreError(f"{key}: {stream} moments cover {merged.count} vectors; PHI-S needs at least 2")
                per_key.append(parts)
                own.append(merged)
                spectra.append(_key_spectrum(key, parts, merged))
                tars[key] = store.tar_indices(key, max_tars)
            merged = merge_keys(per_key, key_weighting)
            fp = moments_fingerprint(merged, key_weighting)
            unchanged = current_fingerprint(store, teacher, stream) == fp
            known = _phis_group(store, teacher, stream, fp) is not None  # fitted before: made current again
            damaged = False
            try:
                phis = load_teacher_phis(store, teacher, stream, fp) if known else fit_phis(merged)
            except CorruptError:  # a damaged stored normalizer is refitted (same moments: same fingerprint)
                unchanged, known, phis = False, False, fit_phis(merged)
                damaged = True
            if not unchanged:
                _write_phis(store, teacher, stream, phis, merged.count, tars, fp, provenance, damaged, key_weighting)
            reports.append(
                FitReport(
                    teacher,
                    tuple(tkeys),
                    stream,
                    sum(len(parts) for parts in per_key),
                    merged.count,
                    phis,
                    describe(len(phis.mean)),
                    unchanged,
                    tuple(spectra),
                    fp,
                    key_weighting,
                    tuple(key_variance(phis, m) for m in own),
                )
            )
    return reports


def _stream_group(store: FeatureStore, teacher: str, stream: str):
    root = store.root
    if "normalizers" not in root or teacher not in root["normalizers"] or stream not in root["normalizers"][teacher]:
        return None
    return root["normalizers"][teacher][stream]


def current_fingerprint(store: FeatureStore, teacher: str, stream: str = "features") -> str | None:
    """The fingerprint of the teacher's normalizer in use (the ``current`` pointer; a store in the
    unversioned layout: its one normalizer's), or None before fit-phis."""
    s = _stream_group(store, teacher, stream)
    if s is None:
        return None
    fp = s.attrs.get("current", s.attrs.get("fingerprint"))
    return str(fp) if fp is not None else None


def _phis_group(store: FeatureStore, teacher: str, stream: str, fingerprint: str | None = None):
    """The Zarr group of the normalizer ``fingerprint`` (default: the current one) with its arrays
    fully written (its attributes name its fingerprint), or None."""
    s = _stream_group(store, teacher, stream)
    fp = fingerprint or current_fingerprint(store, teacher, stream)
    if s is None or fp is None:
        return None
    if fp in s and s[fp].attrs.get("fingerprint") == fp:
        return s[fp]
    return s if s.attrs.get("fingerprint") == fp else None  # the unversioned layout


def normalizer_versions(store: FeatureStore, teacher: str, stream: str = "features") -> list[str]:
    """Fingerprints of every complete normalizer of the teacher's stream in the store, sorted."""
    s = _stream_group(store, teacher, stream)
    if s is None:
        return []
    found = {name for name in s.group_keys() if s[name].attrs.get("fingerprint") == name}
    if "fingerprint" in s.attrs:
        found.add(str(s.attrs["fingerprint"]))
    return sorted(found)


def _write_phis(
    store: FeatureStore,
    teacher: str,
    stream: str,
    p: PhiS,
    count: int,
    tars: dict[str, list[int]],
    fp: str,
    provenance: dict[str, str],
    damaged: bool = False,
    key_weighting: str = "count",
) -> None:
    """Add normalizer ``fp`` (unless the store has it) and make it current. Never rewrites an
    existing normalizer (compact targets may be expressed in it), except one whose checksums
    failed (``damaged``): it is rewritten from the same moments, hence the same values."""
    s = store.root.require_group("normalizers").require_group(teacher).require_group(stream)
    if damaged or _phis_group(store, teacher, stream, fp) is None:
        if fp in s:  # a write killed before its attributes, or damaged: its arrays are not trusted
            store.location.remove_prefix(f"normalizers/{teacher}/{stream}/{fp}")
            store.root = store._open_root()
            s = store.root["normalizers"][teacher][stream]
        g = s.create_group(fp)
        for name in ("mean", "transform", "inverse", "eigenvalues", "std"):
            value = getattr(p, name)
            create_array(g, name, shape=value.shape, dtype="float64", chunks=value.shape, fill_value=0)[...] = value
        # Attributes after the arrays and in one write of zarr.json: a fingerprint names arrays that are fully written.
        g.update_attributes(
            {
                "phi": p.phi,
                "count": count,
                "keys": sorted(tars),
                "key_weighting": key_weighting,
                "tars": tars,
                "provenance": provenance,
                "hadamard": describe(len(p.mean)),
                "fingerprint": fp,
            }
        )
    s.update_attributes({"current": fp})  # last: the pointer moves only to a complete normalizer


def normalizer_info(
    store: FeatureStore, teacher: str, stream: str = "features", fingerprint: str | None = None
) -> dict | None:
    """The attributes (``keys``, ``tars``, ``count``, ``fingerprint``, ...) of the normalizer
    ``fingerprint`` (default: the current one), or None."""
    g = _phis_group(store, teacher, stream, fingerprint)
    if g is None:
        return None
    return {k: v for k, v in g.attrs.items() if k != "current"}


def load_teacher_phis(
    store: FeatureStore, teacher: str, stream: str = "features", fingerprint: str | None = None
) -> PhiS:
    """The teacher's normalizer ``fingerprint`` (default: the current one)."""
    g = _phis_group(store, teacher, stream, fingerprint)
    if g is None:
        if fingerprint is not None and current_fingerprint(store, teacher, stream) is not None:
            raise StoreError(f"{teacher}: the store has no PHI-S {fingerprint} for {stream}")
        raise StoreError(f"{teacher}: no PHI-S for {stream}; run `radio fit-phis`")
    arrays = {
        n: read(g[n], ..., f"{store.path}: {g.path}/{n}")
        for n in ("mean", "transform", "inverse", "eigenvalues", "std")
    }
    return PhiS(phi=float(g.attrs["phi"]), **arrays)


def load_phis(store: FeatureStore, key: str, stream: str = "features") -> PhiS:
    """The PHI-S that normalizes ``key``: its teacher's (checks the key was merged into it)."""
    teacher = teacher_of(store, key)
    info = normalizer_info(store, teacher, stream)
    if info is None or key not in info.get("keys", []):
        raise StoreError(f"{key}: no PHI-S for {stream} of teacher {teacher} covering it; run `radio fit-phis`")
    return load_teacher_phis(store, teacher, stream)


def normalizer_for(
    store: FeatureStore,
    *,
    teacher: str | None = None,
    key: str | None = None,
    stream: str = "features",
    mode: str = "phis",
) -> Normalizer:
    """The :class:`Normalizer` of a teacher, or of a target key (its teacher's), in ``mode``
    (``none`` needs no fit: identity of the key's / teacher's width)."""
    if (teacher is None) == (key is None):
        raise ValueError("normalizer_for takes exactly one of teacher= or key=")
    if mode == "none":
        keys = [key] if key is not None else teacher_keys(store, teacher)
        if not keys:
            raise StoreError(f"{store.path}: no target key of teacher {teacher!r}")
        k = keys[0]
        t = store.target(k)
        return Normalizer("none", np.zeros(t.feature_dim if stream == "features" else t.summary_dim))
    phis = load_phis(store, key, stream) if key is not None else load_teacher_phis(store, teacher, stream)
    return Normalizer.from_phis(mode, phis)


class Normalizer(nn.Module):
    """Normalize targets ``[..., C]`` for the loss, and map predictions back to the teacher's space.

    ``phis``: x' = (x - μ) Wᵀ with W = (1/φ) H Uᵀ; ``standardize``: x' = (x - μ) / σ per channel;
    ``none``: identity. Works on any device and dtype (computes in at least float32, returns the
    input's dtype). Its buffers travel with a model's state dict, so an export carries them.
    """

    def __init__(
        self,
        mode: str,
        mean: np.ndarray,
        matrix: np.ndarray | None = None,
        inverse: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ):
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
