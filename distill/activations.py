"""``student.checkpoint_activations``: which runs recompute block activations in backward.

A ViT keeps every block's activations for backward: about ``depth × tokens × (≈ 10·dim + 2·mlp)``
values per image, so at 1024 px (4096 tokens) a ViT-H/g batch no longer fits beside its optimizer
state. Recomputing them costs one more forward (≈ +1/3 of a step's FLOPs), so ``auto`` turns it on
only where memory, not compute, is the limit: sizes ``h`` and ``g`` at ≥ 1024 px.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

HEAVY_SIZES = ("h", "g")
MIN_RESOLUTION = 1024


def checkpoint_activations(setting: bool | Literal["auto"], size: str, resolutions: Iterable[int]) -> bool:
    """Whether a stage training ``size`` at ``resolutions`` (its partitions' px) recomputes activations."""
    if setting != "auto":
        return bool(setting)
    return size in HEAVY_SIZES and max(resolutions, default=0) >= MIN_RESOLUTION
