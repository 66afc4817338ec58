"""PFM, the Portable Float Map Middlebury stores disparities in: ``Pf`` (one channel) or ``PF``
(three), a text header ``W H`` and a scale whose sign is the byte order (negative: little
endian), then float32 rows bottom to top. Middlebury marks unknown disparity with ``inf``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_pfm(path: str | Path, image: np.ndarray) -> None:
    """``[H, W]`` or ``[H, W, 3]`` float array → little-endian PFM (top row first in ``image``)."""
    a = np.asarray(image, dtype="<f4")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"PFM holds [H, W] or [H, W, 3] arrays, got shape {a.shape}")
    header = f"{'PF' if a.ndim == 3 else 'Pf'}\n{a.shape[1]} {a.shape[0]}\n-1.0\n".encode()
    Path(path).write_bytes(header + np.ascontiguousarray(a[::-1]).tobytes())


def read_pfm(path: str | Path) -> np.ndarray:
    """A PFM file as ``[H, W]`` (or ``[H, W, 3]``) float32, top row first; a malformed file is a
    ``ValueError`` naming it."""
    data = Path(path).read_bytes()
    try:
        kind, dims, scale, rest = data.split(b"\n", 3)
        channels = {b"Pf": 1, b"PF": 3}[kind.strip()]
        width, height = (int(v) for v in dims.split())
        dtype = "<f4" if float(scale) < 0 else ">f4"
        a = np.frombuffer(rest, dtype=dtype, count=width * height * channels)
    except (ValueError, KeyError):
        raise ValueError(f"{path}: not a PFM file (expected 'Pf' or 'PF', 'W H', scale, float32 rows)") from None
    shape = (height, width) if channels == 1 else (height, width, 3)
    return a.reshape(shape)[::-1].astype(np.float32)
