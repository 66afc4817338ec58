"""The student view: what phase 2's student sees of a row, from the decoded image and its box.

One function, so the two paths that make it agree by construction: featurize's CPU stage calls
it to store a row's pixels at each partition resolution (``featurize.student_pixels``,
:mod:`radio.store.pixels`), and phase 2 calls it when it decodes the row from its tar instead
(:class:`radio.distill.data.PartitionRows`). A change to the view (a margin around the box, say)
is made here, and a stored view records its version (:data:`radio.store.pixels.VIEW`).
"""

from __future__ import annotations

import numpy as np

from .crops import CropBox, margin_view


def student_view(pixels: np.ndarray, box: CropBox, resolution: int, pad: int = 0) -> np.ndarray:
    """``pixels [H, W, 3] uint8`` → the row's box resized to ``[resolution + 2·pad]² × 3 uint8``:
    with ``pad`` 0 the box itself (:func:`~radio.shards.crops.crop_resize`, the resize teachers'
    inputs use too); with a shift plan's ``pad`` the box extended by ``pad`` output pixels per
    side at the same scale (:func:`~radio.shards.crops.margin_view`), which the shift windows cut."""
    return margin_view(pixels, box, resolution, pad)


__all__ = ["student_view"]
