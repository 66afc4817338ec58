"""The target space a teacher's feature head was trained in, recorded with the weights.

A head predicts its teacher's features in one normalizer's space (``y = T (x − μ)``). Weights
mean nothing without that space, so checkpoints and final weights carry it: per teacher the
normalization ``mode``, the store normalizer's ``fingerprint`` (None for ``none``) and the
normalizer's tensors (``mean [C]``, ``matrix [C, C]`` = T, ``inverse [C, C]``), taken from the
loss's own normalizer objects. A stage that starts from weights recorded in another space
re-projects the head (:mod:`.reproject`); a resume of the same stage across a refit is refused.

In a checkpoint (``torch.load(weights_only=True)``: tensors and plain values only)::

    "normalizers": {TEACHER: {"mode": str, "fingerprint": str | None, "mean": T, "matrix": T, "inverse": T}}

In final weights: tensors ``export.normalizers.TEACHER.{mean,matrix,inverse}`` and, per teacher
entry of the ``radio_export`` metadata, ``normalization`` and ``normalizer.fingerprint``
(:mod:`.final_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

TENSORS = ("mean", "matrix", "inverse")  # a Normalizer's buffers


@dataclass(frozen=True)
class TargetSpace:
    """One head's target space ``y = matrix (x − mean)``: ``mean [C]``, ``matrix [C, C]``,
    ``inverse [C, C]`` (float64), the normalization ``mode`` and the store normalizer's
    ``fingerprint`` (None for ``none``, or unknown)."""

    mode: str
    fingerprint: str | None
    mean: torch.Tensor
    matrix: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def of(cls, normalizer, fingerprint: str | None) -> TargetSpace:
        """The space of a :class:`~radio.store.normalizers.Normalizer` (its buffers, on the CPU)."""
        t = {n: getattr(normalizer, n).detach().double().cpu().clone() for n in TENSORS}
        return cls(normalizer.mode, None if normalizer.mode == "none" else fingerprint, **t)

    @classmethod
    def identity(cls, dim: int) -> TargetSpace:
        eye = torch.eye(dim, dtype=torch.float64)
        return cls("none", None, torch.zeros(dim, dtype=torch.float64), eye, eye.clone())

    def same(self, other: TargetSpace) -> bool:
        """Whether a head trained in ``other`` predicts in this space (same mode and fit)."""
        return self.mode == other.mode and self.fingerprint == other.fingerprint

    @property
    def label(self) -> str:
        """How messages name it: the fingerprint (PHI-S), else the mode and fingerprint."""
        if self.mode == "phis" and self.fingerprint:
            return self.fingerprint
        return f"{self.mode} {self.fingerprint}" if self.fingerprint else self.mode

    def normalizer(self):
        """A :class:`~radio.store.normalizers.Normalizer` with this space's tensors."""
        from radio.store.normalizers import Normalizer

        c = len(self.mean)
        norm = Normalizer(self.mode, np.zeros(c), np.eye(c), np.eye(c), np.ones(c))
        norm.load_state_dict({n: getattr(self, n) for n in TENSORS})
        return norm

    def record(self) -> dict:
        """The checkpoint form (tensors and plain values only)."""
        return {"mode": self.mode, "fingerprint": self.fingerprint} | {n: getattr(self, n) for n in TENSORS}

    @classmethod
    def from_record(cls, r: Mapping) -> TargetSpace:
        return cls(str(r["mode"]), r.get("fingerprint"), *(torch.as_tensor(r[n], dtype=torch.float64) for n in TENSORS))


def first_change(
    recorded: Mapping[str, TargetSpace], spaces: Mapping[str, TargetSpace]
) -> tuple[str, TargetSpace, TargetSpace] | None:
    """The first teacher (by name) whose ``recorded`` space differs from its space in ``spaces``:
    ``(teacher, recorded, now)``; None when every recorded one is the same."""
    for t in sorted(spaces):
        if t in recorded and not recorded[t].same(spaces[t]):
            return t, recorded[t], spaces[t]
    return None


def records(spaces: Mapping[str, TargetSpace]) -> dict[str, dict]:
    """Every teacher's space in the checkpoint form."""
    return {t: s.record() for t, s in sorted(spaces.items())}


def from_records(r: Mapping[str, Mapping] | None) -> dict[str, TargetSpace] | None:
    """A checkpoint's ``normalizers`` entry back as spaces; None when it records none (older radio)."""
    return None if r is None else {t: TargetSpace.from_record(v) for t, v in r.items()}


def final_spaces(
    tensors: Mapping[str, torch.Tensor], meta: Mapping | None, prefix: str
) -> dict[str, TargetSpace] | None:
    """The spaces recorded in a final weights file: its ``tensors`` (``PREFIXnormalizers.T.*``)
    and ``meta`` (its ``radio_export`` metadata); None when it records none (no metadata)."""
    if meta is None:
        return None
    spaces = {}
    for entry in meta.get("teachers", []):
        if "normalizer" not in entry:
            continue  # a teacher the stage did not train, written before heads carried their space
        name, mode = entry["name"], entry.get("normalization", "phis")
        fp = (entry.get("normalizer") or {}).get("fingerprint")
        if mode == "none":
            spaces[name] = TargetSpace.identity(int(entry["feature_dim"]))
            continue
        t = [tensors.get(f"{prefix}normalizers.{name}.{n}") for n in TENSORS]
        if any(x is None for x in t):
            continue
        spaces[name] = TargetSpace(mode, fp, *(x.double() for x in t if x is not None))
    return spaces
