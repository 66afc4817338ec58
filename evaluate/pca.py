"""PCA pictures of feature maps (paper Fig. 3 and A1, the "mode switching" figure).

Features of one image at several resolutions are projected on 3 principal components fitted
*jointly* on all of them (every position of every resolution), so a colour means the same
direction in feature space in every column and a change of colour across columns is a change
of the features, not of the projection. Each component is mapped to [0, 1] with its 1st and
99th percentiles over all the maps (outliers clip instead of washing the picture out).

:func:`render_grid` lays cells out on a white canvas with row and column labels; its layout
(cell size, margins, each cell's box) is returned so a caller can record it beside the PNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def fit_pca(x: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [N, C]`` → ``(mean [C], components [k, C])``, components by decreasing variance, each
    signed so its largest-magnitude loading is positive (a deterministic colouring)."""
    x = x.double()
    mean = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:k]
    if comps.shape[0] < k:  # fewer channels or samples than k: pad with zero directions
        comps = torch.cat([comps, comps.new_zeros(k - comps.shape[0], x.shape[1])])
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    return mean, comps * torch.where(signs == 0, torch.ones_like(signs), signs)


def pca_rgb(maps: Sequence[torch.Tensor], percentiles: tuple[float, float] = (1.0, 99.0)) -> list[np.ndarray]:
    """Feature maps ``[h_i, w_i, C]`` (one image, several resolutions) → ``[h_i, w_i, 3]`` float
    images in [0, 1], projected on 3 components fitted jointly on all maps."""
    flat = torch.cat([m.reshape(-1, m.shape[-1]).double() for m in maps])
    mean, comps = fit_pca(flat, 3)
    proj = (flat - mean) @ comps.T  # [N, 3]
    lo = torch.quantile(proj, percentiles[0] / 100, dim=0)
    hi = torch.quantile(proj, percentiles[1] / 100, dim=0)
    scaled = ((proj - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))).clamp(0, 1)
    out, start = [], 0
    for m in maps:
        n = m.shape[0] * m.shape[1]
        out.append(scaled[start : start + n].reshape(m.shape[0], m.shape[1], 3).numpy())
        start += n
    return out


def render_grid(
    cells: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cell: int = 160,
    gap: int = 4,
    label_width: int = 200,
    header: int = 28,
):
    """A PIL image of ``cells[r][c]`` (``[h, w, 3]`` float in [0, 1] or uint8), each scaled to
    ``cell``×``cell`` (nearest: one block per token), with labels; returns ``(image, layout)``."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = len(cells), len(col_labels)
    if len(row_labels) != rows or any(len(r) != cols for r in cells):
        raise ValueError(f"a {rows}x{cols} grid needs {rows} row labels and {cols} cells per row")
    width = label_width + cols * (cell + gap) + gap
    height = header + rows * (cell + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    boxes = []
    for c, label in enumerate(col_labels):
        draw.text(
            (label_width + gap + c * (cell + gap) + cell // 2, header // 2), label, fill="black", font=font, anchor="mm"
        )
    for r, label in enumerate(row_labels):
        y = header + gap + r * (cell + gap)
        short = label if len(label) <= 24 else "…" + label[-23:]  # the file name is the telling end
        draw.text((gap, y + cell // 2), short, fill="black", font=font, anchor="lm")
        row_boxes = []
        for c, img in enumerate(cells[r]):
            x = label_width + gap + c * (cell + gap)
            a = np.asarray(img)
            a = a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
            canvas.paste(Image.fromarray(a).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            row_boxes.append([x, y, x + cell, y + cell])
        boxes.append(row_boxes)
    layout = {
        "rows": list(row_labels),
        "columns": list(col_labels),
        "cell": cell,
        "gap": gap,
        "label_width": label_width,
        "header": header,
        "size": [width, height],
        "boxes": boxes,
    }
    return canvas, layout
