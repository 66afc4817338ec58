"""radio: train agglomerative vision foundation models (RADIO-AMP) and use them.

The parts live in their own top-level folders, linked in here (``radio/store -> ../store``, ...):
``radio.store``, ``radio.featurize``, ``radio.distill``, ``radio.evaluate``, ``radio.cli``. This
file holds only the inference entry point::

    model = radio.load("exports/tiny")        # a folder written by `radio export`
    out = model(images)                        # images [B, 3, H, W] in [0, 1], H, W multiples of 16
    out.summary, out.features                  # [B, n_cls * D], [B, h, w, D]
    out.adaptors["dfn_clip"].features          # [B, h, w, C] in the teacher's own space
"""

from __future__ import annotations


def load(path, device="cpu"):
    """Load an exported student (see :func:`radio.distill.export.load`)."""
    from radio.distill.export import load as _load

    return _load(path, device)


__all__ = ["load"]
