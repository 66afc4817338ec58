"""Compact targets in training: which keys the loader reads compact, and their decode on the device.

A key compacted by `radio store compact` arrives from the loader as one byte per value (int8, or
fp8 bits) and is moved to the device as such; :class:`CompactDecoder` then decodes it there,
straight into PHI-S space (:func:`radio.store.codec.decode_on_device`), so the loss skips
``normalize`` for it. Values encoded in a normalizer that a refit has since replaced as current
are re-expressed in the current one on the device (``y_new = y_old A + b``,
:func:`radio.store.compact.reexpression`), so every key of a teacher trains in one space. A
compacted summary is mapped back to the teacher's space (the summary loss is a cosine there).
Raw keys pass through untouched, so a stage may mix both.

Wiring: ``batch = decode_targets(to_device(batch), decoders)`` at the one place the trainer
converts targets after the host→device copy; ``DistillLoss(..., prenormalized=set(decoders))``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from radio.store.codec import Codec, decode_on_device
from radio.store.compact import (
    CompactKey,
    check_normalizer,
    compact_complete,
    compact_key,
    compact_phis,
    current_phis,
    is_current,
    raw_missing,
    reads_compact,
    reexpression,
)
from radio.store.layout import FeatureStore, StoreError


def compact_keys(store: FeatureStore, keys: list[str]) -> dict[str, CompactKey]:
    """The keys of ``keys`` whose every featurized tar is compacted: the loader reads those compact.

    A key with some tars only compact (written so by featurize) and others only raw cannot be read
    either way: :class:`StoreError` says to compact the rest.
    """
    out: dict[str, CompactKey] = {}
    for k in keys:
        if reads_compact(store, k):
            ck = compact_key(store, k)
            assert ck is not None  # reads_compact: the key has a codec
            out[k] = ck
            check_normalizer(store, out[k])
        elif raw_missing(store, k)[store.completed(k)].any():
            left = int((store.completed(k) & ~compact_complete(store, k)).sum())
            raise StoreError(
                f"{k}: some tars are stored only compact and {left} only raw; "
                "run `radio store compact` to compact the rest"
            )
    return out


def raw_dropped(store: FeatureStore, key: str) -> bool:
    """Whether some of ``key``'s raw fp16 targets are absent (`store compact --drop-raw`, or tars
    featurize wrote compact directly)."""
    return bool(raw_missing(store, key)[store.completed(key)].any())


def _codec_buffers(module: nn.Module, prefix: str, codec: Codec) -> None:
    module.register_buffer(f"{prefix}_scale", torch.as_tensor(codec.scale, dtype=torch.float32), persistent=False)
    basis = None if codec.basis is None else torch.as_tensor(codec.basis, dtype=torch.float32)
    module.register_buffer(f"{prefix}_basis", basis, persistent=False)


class CompactDecoder(nn.Module):
    """Decode one compact key's batch tensors on their device (buffers follow ``.to(device)``).

    ``features [B, h, w, K]`` one byte → ``[B, h, w, C]`` float32 in the teacher's current PHI-S
    space (re-expressed from the one they were encoded in when a refit replaced it); ``summary
    [B, Ks]`` one byte → ``[B, Cs]`` float32 in the teacher's space.
    """

    # buffers registered in __init__ (by _codec_buffers)
    features_scale: torch.Tensor
    features_basis: torch.Tensor | None
    features_reexpress: torch.Tensor | None  # [C, C] A of y_new = y_old A + b, None when encoded in the current space
    features_shift: torch.Tensor | None  # [C] b
    summary_scale: torch.Tensor
    summary_basis: torch.Tensor | None
    summary_inverse: torch.Tensor
    summary_mean: torch.Tensor

    def __init__(self, ck: CompactKey, store: FeatureStore):
        super().__init__()
        _codec_buffers(self, "features", ck.features)
        a = b = None
        if not is_current(store, ck, "features"):
            own, current = compact_phis(store, ck, "features"), current_phis(store, ck.key, "features")
            a, b = (torch.as_tensor(v, dtype=torch.float32) for v in reexpression(own, current))
        self.register_buffer("features_reexpress", a, persistent=False)
        self.register_buffer("features_shift", b, persistent=False)
        self.has_summary = ck.summary is not None
        if ck.summary is not None:
            _codec_buffers(self, "summary", ck.summary)
            p = compact_phis(store, ck, "summary")  # the space it was encoded in, mapped straight to the teacher's
            self.register_buffer("summary_inverse", torch.as_tensor(p.inverse, dtype=torch.float32), persistent=False)
            self.register_buffer("summary_mean", torch.as_tensor(p.mean, dtype=torch.float32), persistent=False)

    def forward(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(targets)
        y = decode_on_device(targets["features"], self.features_scale, self.features_basis)
        if self.features_reexpress is not None and self.features_shift is not None:
            y = y @ self.features_reexpress + self.features_shift
        out["features"] = y
        if self.has_summary:
            y = decode_on_device(targets["summary"], self.summary_scale, self.summary_basis)
            out["summary"] = y @ self.summary_inverse.T + self.summary_mean
        return out


def build_decoders(store: FeatureStore, keys: list[str]) -> nn.ModuleDict:
    return nn.ModuleDict({k: CompactDecoder(ck, store) for k, ck in compact_keys(store, keys).items()})


def decode_targets(batch: dict, decoders: nn.ModuleDict) -> dict:
    """A device batch with its compact keys decoded; raw keys untouched."""
    if not len(decoders):
        return batch
    targets = {k: decoders[k](t) if k in decoders else t for k, t in batch["targets"].items()}
    return batch | {"targets": targets}


def to_teacher_space(store: FeatureStore, key: str, y: torch.Tensor) -> torch.Tensor:
    """Decoded features (:class:`CompactDecoder`: the current PHI-S space) → the teacher's space
    (for evaluation once raw targets are dropped)."""
    p = current_phis(store, key, "features")
    return (y.double() @ torch.from_numpy(np.asarray(p.inverse)).T + torch.from_numpy(p.mean)).float()
