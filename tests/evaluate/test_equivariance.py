"""Scale equivariance (paper A.5): the measure on constructed features, ranges, tiling, and
`radio eval equivariance` on a student export and on a DINOv2 teacher."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from radio.evaluate.equivariance import scale_ranges, scale_variance, split_tiles, stitch_tiles, tiled_features


def _linear(grid: int, coeffs: torch.Tensor) -> torch.Tensor:
    """``[1, grid, grid, C]``: channel c = a_c·u + b_c·v + d_c at the pixel centres
    u = (j + 0.5) / grid, v = (i + 0.5) / grid (``align_corners=False`` coordinates)."""
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    a, b, d = coeffs
    return (u[..., None] * a + v[..., None] * b + d)[None]


def test_zero_for_features_consistent_across_scales():
    # A linear function of image position, sampled at each grid's pixel centres, is reproduced
    # exactly by bilinear shrinking (align_corners=False), so the measure is 0 up to rounding.
    coeffs = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    feats = [_linear(g, coeffs) for g in (4, 6, 8, 12, 16)]
    assert float(scale_variance(feats)) == pytest.approx(0.0, abs=1e-20)
    # features constant over space (per channel): std 0 → only centred, still 0
    const = [torch.full((2, g, g, 3), 7.0) for g in (4, 8)]
    assert scale_variance(const).tolist() == [0.0, 0.0]


def test_positive_and_growing_with_scale_dependent_content():
    g = torch.Generator().manual_seed(1)
    coeffs = torch.randn(3, 4, generator=g, dtype=torch.float64)
    grids = (4, 6, 8)
    noise = [torch.randn(1, n, n, 4, generator=g, dtype=torch.float64) for n in grids]
    values = [
        float(scale_variance([_linear(n, coeffs) + amp * z for n, z in zip(grids, noise)]))
        for amp in (0.0, 0.1, 0.3, 1.0)
    ]
    assert values[0] == pytest.approx(0.0, abs=1e-20)
    assert 0 < values[1] < values[2] < values[3]


def test_hand_computed_two_resolutions():
    # smallest 1x2 grid [0, 2]: μ = 1, σ = 1 (population) → normalized [-1, 1]
    small = torch.tensor([0.0, 2.0]).view(1, 1, 2, 1)
    # 2x4 grid; plain bilinear to 1x2 averages each 2x2 block: [1, 4] → normalized [0, 3]
    large = torch.tensor([[1.0, 1.0, 3.0, 5.0], [1.0, 1.0, 3.0, 5.0]]).view(1, 2, 4, 1)
    # unbiased variance of two values = (a - b)² / 2: positions (−1, 0) → 0.5 and (1, 3) → 2
    assert float(scale_variance([large, small])) == pytest.approx((0.5 + 2.0) / 2)


def test_images_are_measured_one_by_one():
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(1, n, n, 3, generator=g) for n in (3, 5)]
    b = [torch.randn(1, n, n, 3, generator=g) * 10 + 4 for n in (3, 5)]
    both = scale_variance([torch.cat([x, y]) for x, y in zip(a, b)])
    assert both.tolist() == pytest.approx([float(scale_variance(a)), float(scale_variance(b))])


def test_ranges_follow_table_2():
    r = scale_ranges([1024, 256, 384, 512, 768])
    assert r == {"fine": (256, 384, 512), "coarse": (256, 512, 768, 1024), "all": (256, 384, 512, 768, 1024)}


def test_tiles_split_and_stitch_back():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    tiles = split_tiles(images, 2)
    assert tiles.shape == (8, 3, 4, 4)
    assert torch.equal(tiles[1], images[0, :, :4, 4:])  # row-major: the top-right tile is second
    # "features" = pixels channel-last: stitching the tiles' grids gives back the whole image
    stitched = tiled_features(lambda x: x.permute(0, 2, 3, 1), images, 2)
    assert torch.equal(stitched, images.permute(0, 2, 3, 1))
    assert torch.equal(stitch_tiles(tiles.permute(0, 2, 3, 1), 2), images.permute(0, 2, 3, 1))


@pytest.mark.slow
def test_cli_student_and_teacher(tiny_export, labeled_set, eval_app, tmp_path):
    _, _, model, _ = tiny_export
    images = labeled_set / "val" / "astronaut"
    runner = CliRunner()
    result = runner.invoke(
        eval_app,
        [
            "eval",
            "equivariance",
            "--model",
            str(model),
            "--images",
            str(images),
            "--resolutions",
            "64,96,128,192,256",
            "--tiling",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fine scale" in result.stdout and "(tiling)" in result.stdout
    r = json.loads((model / "eval" / "equivariance.json").read_text())
    assert r["ranges"] == {"fine": [64, 96, 128], "coarse": [64, 128, 192, 256], "all": [64, 96, 128, 192, 256]}
    assert len(r["images"]) == 3 and all(v > 0 for v in r["native"].values())
    assert r["tiling"]["fine"] is None and r["tiling"]["coarse"] > 0
    assert r["native"]["coarse"] == pytest.approx(sum(r["per_image"]["native:coarse"]) / 3)

    out = tmp_path / "dino.json"
    result = runner.invoke(
        eval_app,
        [
            "eval",
            "equivariance",
            "--teacher",
            "dinov2_tiny",
            "--images",
            str(images),
            "--resolutions",
            "64,128",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["model"] == "dinov2_tiny" and r["input_sizes"] == [56, 112]  # patch 14: res * 14 / 16
    assert r["native"]["fine"] > 0 and r["native"]["fine"] == r["native"]["coarse"] == r["native"]["all"]


def test_cli_refuses_bad_requests(eval_app, labeled_set):
    runner = CliRunner()
    images = str(labeled_set / "val" / "coins")
    result = runner.invoke(eval_app, ["eval", "equivariance", "--images", images])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: give exactly one of --model (a student export) and --teacher (a registered teacher)"
    )
    result = runner.invoke(
        eval_app, ["eval", "equivariance", "--teacher", "dinov2_tiny", "--images", images, "--resolutions", "64,100"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --resolutions '64,100': every resolution must be a positive multiple of 16"
    result = runner.invoke(eval_app, ["eval", "equivariance", "--teacher", "sam_tiny", "--images", images])
    assert result.exit_code == 2 and "runs only on its fixed" in result.stderr
    result = runner.invoke(eval_app, ["eval", "equivariance", "--teacher", "nope", "--images", images])
    assert result.exit_code == 2 and result.stderr.startswith("error: unknown teacher 'nope' (known: ")
