"""`radio viz pca`: a PNG grid, a row per image and a column per resolution, with its layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from radio.evaluate.pca import fit_pca, pca_rgb


def test_joint_projection_is_shared_across_resolutions():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    small = torch.linspace(-1, 1, 4 * 4)[:, None] * direction  # all variance along one direction
    large = torch.linspace(-1, 1, 8 * 8)[:, None] * direction
    _, comps = fit_pca(torch.cat([small, large]))
    assert comps.shape == (3, 16)
    assert abs(float(torch.nn.functional.cosine_similarity(comps[0], direction, dim=0))) == pytest.approx(1.0)
    a, b = pca_rgb([small.view(4, 4, 16), large.view(8, 8, 16)])
    assert a.shape == (4, 4, 3) and b.shape == (8, 8, 3)
    assert a.min() >= 0 and b.max() <= 1
    # the same feature gets the same colour at either resolution: the first and last positions
    assert np.allclose(a[0, 0], b[0, 0]) and np.allclose(a[-1, -1], b[-1, -1])


@pytest.mark.slow
@pytest.mark.parametrize("who", ["student", "teacher"])
def test_cli_grid_layout(who, tiny_export, labeled_set, eval_app, tmp_path):
    _, _, model, _ = tiny_export
    png = tmp_path / "pca.png"
    source = ["--model", str(model)] if who == "student" else ["--teacher", "dinov2_tiny"]
    result = CliRunner().invoke(
        eval_app,
        [
            "viz",
            "pca",
            *source,
            "--images",
            str(labeled_set / "val" / "moon"),
            "--resolutions",
            "64,128,256",
            "--out",
            str(png),
            "--cell",
            "48",
        ],
    )
    assert result.exit_code == 0, result.output
    layout = json.loads(png.with_suffix(".json").read_text())
    assert layout["rows"] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert layout["columns"] == ["input", "64 px", "128 px", "256 px"]
    image = np.asarray(Image.open(png).convert("RGB"))
    assert [image.shape[1], image.shape[0]] == layout["size"]
    assert len(layout["boxes"]) == 3 and all(len(row) == 4 for row in layout["boxes"])
    for row in layout["boxes"]:
        for x0, y0, x1, y1 in row:
            assert (x1 - x0, y1 - y0) == (48, 48)
            assert (image[y0:y1, x0:x1] != 255).any()  # a picture, not the white background
    x0, y0, x1, _ = layout["boxes"][0][0]
    assert (image[y0 - 2, x0:x1] == 255).all()  # the gap above the first row is background
