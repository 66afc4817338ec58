"""The one mosaic rule (paper §4.3, DESIGN.md §4): whether k×k tiles of a teacher's canvas can
hold images of a key's resolution, which keys a ``--mosaic k`` applies to, and whether a key's
input fits its teacher (canvas teachers need a mosaic, others must not have one).

Pure integer arithmetic, no torch: config validation, featurize and the CLI all import it
(config must not import featurize). Each caller words its own error (their messages predate
this module and tests pin them); the rule itself lives only here.
"""

from __future__ import annotations

from enum import Enum


class Misfit(Enum):
    """Why k×k tiles of a canvas cannot hold a key's images (the first rule broken)."""

    NOT_POWER_OF_TWO = "not a power of two"
    UNALIGNED = "tiles not patch-aligned"  # the canvas does not split evenly into patch-aligned tiles
    TOO_SMALL = "tiles smaller than the resolution"


class InputMisfit(Enum):
    """Why a key's teacher input does not fit its teacher."""

    NEEDS_MOSAIC = "a canvas teacher without a mosaic"
    NOT_A_CANVAS = "a mosaic for a teacher that runs at any size"
    OTHER_CANVAS = "a canvas of another side than the teacher's"
    OFF_PATCH = "a resolution not a multiple of the teacher's patch"


def is_power_of_two(k: int) -> bool:
    """Mosaic factors are 1, 2, 4, ...: tiles then split every power-of-two canvas evenly."""
    return k >= 1 and not k & (k - 1)


def tile_side(canvas: int, k: int) -> int:
    """Side of one of the k×k tiles of a ``canvas`` px canvas."""
    return canvas // k


def misfit(canvas: int, k: int, resolution: int, patch: int) -> Misfit | None:
    """Why ``k``×``k`` tiles of a ``canvas`` cannot hold images of side ``resolution``, or None.

    The tiles must split the canvas evenly into ``patch``-aligned squares (so every image's block
    of the teacher grid lines up with the student's tokens) at least ``resolution`` wide.
    """
    if not is_power_of_two(k):
        return Misfit.NOT_POWER_OF_TWO
    tile = tile_side(canvas, k)
    if canvas % k or tile % patch:
        return Misfit.UNALIGNED
    if tile < resolution:
        return Misfit.TOO_SMALL
    return None


def mosaic_applies(configured: int | None, k: int, canvas: int, resolution: int, patch: int) -> bool:
    """Whether ``--mosaic k`` replaces a key's ``configured`` mosaic: only canvas keys (those with
    a mosaic) take one, and only where its tiles hold the key's resolution."""
    return configured is not None and misfit(canvas, k, resolution, patch) is None


def input_misfit(
    mosaic: int | None, canvas: int, resolution: int, *, teacher_canvas: bool, input_size: int, patch: int
) -> InputMisfit | None:
    """Why a key (``mosaic``, ``canvas``, ``resolution``) cannot be its teacher's input, or None.

    A canvas teacher (SAM: ``teacher_canvas``) runs only at its ``input_size`` canvas, so its keys
    need a mosaic on exactly that canvas; any other teacher takes the image itself. Either way the
    resolution is a multiple of the teacher's ``patch``.
    """
    if mosaic is None and teacher_canvas:
        return InputMisfit.NEEDS_MOSAIC
    if mosaic is not None and not teacher_canvas:
        return InputMisfit.NOT_A_CANVAS
    if mosaic is not None and canvas != input_size:
        return InputMisfit.OTHER_CANVAS
    if resolution % patch:
        return InputMisfit.OFF_PATCH
    return None
