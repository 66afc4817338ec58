"""Token compression for VLMs (paper §4.7, A.8): merge an encoder's token grid to a fixed budget.

    from radio.compress import merge_tokens, unmerge, reconstruction_error
    res = merge_tokens(x, (h, w), 196)                 # x [B, h*w, C] → res.tokens [B, 196, C]
    err = reconstruction_error(x, unmerge(res.tokens, res.group))

- :mod:`.tome`: strided bipartite soft matching, exact counts by rounds, group maps, unmerge;
- :mod:`.baselines`: average pooling to the closest grid, pixel unshuffle;
- :mod:`.compare`: every method at one budget (the rows of Table A9);
- :mod:`.module`: :class:`TokenMerger` for a VLM projector;
- :mod:`.picture`: the merged regions drawn over the image (Figure 8 / A3);
- :mod:`.images`: reading images for `radio compress`.
"""

from __future__ import annotations

if __name__ != "radio.compress":  # one file, one module: the folder is the package radio.compress
    raise ImportError(f"import radio.compress, not {__name__}: compress/ is importable only as radio.compress")

from .baselines import avg_pool_tokens, pixel_shuffle_tokens, pixel_unshuffle_tokens, pool_grid
from .compare import MethodScore, compare_methods
from .module import TokenMerger
from .tome import MergeResult, Reconstruction, group_means, merge_tokens, reconstruction_error, unmerge

__all__ = [
    "MergeResult",
    "MethodScore",
    "Reconstruction",
    "TokenMerger",
    "avg_pool_tokens",
    "compare_methods",
    "group_means",
    "merge_tokens",
    "pixel_shuffle_tokens",
    "pixel_unshuffle_tokens",
    "pool_grid",
    "reconstruction_error",
    "unmerge",
]
