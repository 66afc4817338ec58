"""Phase 2's student images from stored pixels (``featurize.student_pixels``), CPU or GPU.

A partition whose resolution the store holds pixels at reads each row's stored view
(:class:`radio.store.pixels.StoredPixels`) instead of decoding the row's full image from its tar;
rows of tars without them still come from the tar (:class:`radio.distill.data.PartitionRows`).
Raw views are read straight into the batch (stored channels first); JPEG views are decoded by :func:`decode_views`, batched: on
CUDA with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``), else on the CPU with the
same call (libjpeg-turbo), so the CPU tests run the code path the GPU runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch


def decode_views(
    blobs: Sequence[np.ndarray | torch.Tensor], device: torch.device | str = "cpu", out: torch.Tensor | None = None
) -> torch.Tensor:
    """JPEG views (1-D uint8, one per row, all ``R``×``R``) → ``[B, 3, R, R] uint8`` on ``device``.

    One batched ``decode_jpeg`` call: on CUDA the list is decoded on the device (nvJPEG's batched
    decode; the bytes cross to the GPU, ~28 KB a row at 256 px, not the 196 KB pixels); on the CPU
    the same call decodes on the host. ``out``: the ``[B, 3, R, R]`` batch to fill."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for torchcodec's (not installed)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    data = [b if isinstance(b, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(b)) for b in blobs]
    if not data:
        raise ValueError("decode_views: no views to decode")
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return torch.stack(images, out=out)


__all__ = ["decode_views"]
