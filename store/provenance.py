"""What a target key is (DESIGN.md §3 invariant 5): its teacher, weights and input geometry.

Featurize writes one :class:`TargetProvenance` per key into the key's group attributes; the
store returns it (``store.target(key).provenance``), distill compares it field by field with
the stage it is asked to train, and an export carries its JSON per teacher. The JSON is the
group attributes as they always were, so stores written before this type existed open as
they are; `radio store compact` adds a ``compact`` entry to the same attributes, which is
carried along but is not part of what the key *is* (equality and fingerprint ignore it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import StoreError

# The attribute `radio store compact` adds next to the provenance (not part of it).
COMPACT = "compact"
MARGIN = "margin"  # optional: absent in keys without a shift margin


@dataclass(frozen=True)
class TargetProvenance:
    """One target key's provenance: the teacher output it holds and how its input was made.

    ``grid`` is the ``(H, W)`` token grid of one image's target (features ``[H, W, feature_dim]``,
    summary ``[summary_dim]`` or none); ``input_size`` is the side of the teacher's input, the
    canvas for a mosaic key (``mosaic`` k: k×k images of side ``resolution`` per canvas).

    ``margin`` (issue 26's shift margin): the teacher saw the crop extended by ``margin`` of its
    patches on every side, so ``grid`` (the stored grid) is the crop's :attr:`core_grid` plus
    ``2·margin`` (``input_size`` stays the side without it: a plain key's teacher saw
    ``input_size + 2·margin·patch`` px; a mosaic key's margin lies in its tile's padding). Keys written before it (and keys without one) have 0, and their JSON, and so
    their fingerprint, does not name it.
    """

    target_key: str
    teacher: str  # the config's teacher name (its adaptor head predicts this key)
    model: str  # registry name
    family: str
    weights: str  # a checkpoint, or "random-init"
    resolution: int
    input_size: int
    patch: int
    mosaic: int | None
    grid: tuple[int, int]
    feature_dim: int
    summary_dim: int | None
    mean: tuple[float, ...]  # the teacher's input normalization, per RGB channel
    std: tuple[float, ...]
    output_scale: float
    code_version: str
    margin: int = 0
    # `radio store compact`'s record (codec, rank, clip, ...), None until compacted: not part of
    # what the key is, so equality ignores it.
    compact: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TargetProvenance:
        """From the key's attributes (or an export's ``provenance`` entry); raises
        :class:`StoreError` naming what is missing. Values are kept as stored (no conversion),
        so :meth:`to_json` gives back the same JSON and :meth:`fingerprint` the same hex."""
        names = [f.name for f in fields(cls) if f.name not in (COMPACT, MARGIN)]
        missing = [n for n in names if n not in d]
        if missing:
            raise StoreError(f"not a featurize provenance (no {', '.join(missing)})")
        values = {n: d[n] for n in names}
        values |= {"grid": tuple(d["grid"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])}
        return cls(**values, margin=int(d.get(MARGIN, 0)), compact=d.get(COMPACT))

    def to_json(self) -> dict[str, Any]:
        """The key's attributes: the provenance in its field order, then ``compact`` when set."""
        d = self.record()
        return d if self.compact is None else d | {COMPACT: self.compact}

    def record(self) -> dict[str, Any]:
        """The provenance as featurize writes it (no ``compact`` entry)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != COMPACT}
        if not self.margin:  # as written before margins: the same fingerprint
            del d[MARGIN]
        return d | {"grid": list(self.grid), "mean": list(self.mean), "std": list(self.std)}

    @property
    def core_grid(self) -> tuple[int, int]:
        """The grid of the crop itself (what the student's view at offset 0 is compared with)."""
        return (self.grid[0] - 2 * self.margin, self.grid[1] - 2 * self.margin)

    def fingerprint(self) -> str:
        """16 hex digits of the provenance without ``compact``: what a fitted normalizer records
        per key, to tell later whether it was fitted on the outputs the key holds now."""
        return attrs_fingerprint(self.record())


def attrs_fingerprint(attrs: dict[str, Any]) -> str:
    """:meth:`TargetProvenance.fingerprint` of a key's stored attributes (``compact`` dropped),
    also for keys whose attributes are no featurize provenance (hand-made test stores)."""
    kept = {k: v for k, v in attrs.items() if k != COMPACT}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
