"""SAM mosaic: tiles line up with per-image runs; k² images per teacher forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radio.featurize import mosaic
from radio.featurize.records import FeaturizeSettings, KeyJob
from radio.featurize.teachers import Teacher, TeacherOutput, TeacherSpec, create_teacher
from radio.featurize.worker import TeacherStage


class PatchStandIn(Teacher):
    """A per-patch linear embedding: no mixing across patches, so a tile's block of the grid must
    equal the image run alone, bit for bit, if the mosaic geometry is right."""

    def __init__(self):
        super().__init__()
        self.spec = TeacherSpec("stand_in", "sam", 256, 16, (0.5,) * 3, (0.5,) * 3, None, 8, canvas=True)
        self.proj = torch.nn.Parameter(torch.randn(3 * 16 * 16, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        b, c, h, w = x.shape
        patches = x.unfold(2, 16, 16).unfold(3, 16, 16)  # [B, 3, h/16, w/16, 16, 16]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, h // 16, w // 16, -1)
        # Row by row, so each token's arithmetic is the same whatever the batch holds.
        return TeacherOutput(
            None,
            torch.stack([p @ self.proj for p in patches.reshape(-1, patches.shape[-1])]).reshape(
                b, h // 16, w // 16, 8
            ),
        )


@pytest.mark.parametrize("k, resolution", [(4, 64), (2, 96), (2, 128), (1, 192)])
def test_tile_targets_equal_running_each_image_alone(k, resolution):
    teacher = PatchStandIn()
    n = 2 * k * k - 1 if k > 1 else 3  # the last canvas is not full
    images = torch.rand(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    keys = [f"{i:012d}" for i in range(n)]
    offsets = mosaic.tile_offsets(0, keys, 256, k, resolution, 16)
    assert (offsets % 16 == 0).all() and (offsets <= 256 // k - resolution).all()
    canvases = mosaic.compose(images, k, 256, offsets)
    assert canvases.shape == (-(-n // (k * k)), 3, 256, 256)
    tiles = mosaic.split(teacher(canvases).features, n, k, 256, resolution, offsets)
    for i in range(n):
        alone = teacher(images[i : i + 1]).features[0]
        assert torch.equal(tiles[i], alone)


def test_offsets_vary_when_tiles_have_slack_and_are_seeded_by_key():
    keys = [f"{i:012d}" for i in range(32)]
    a = mosaic.tile_offsets(7, keys, 1024, 2, 432, 16)
    assert set(np.unique(a)) <= set(range(0, 81, 16)) and len(np.unique(a)) > 1  # 432 in 512: 80 px slack
    assert np.array_equal(a[5:], mosaic.tile_offsets(7, keys[5:], 1024, 2, 432, 16))  # per key, not per batch
    assert not mosaic.tile_offsets(7, keys, 1024, 4, 256, 16).any()  # 256 in 256: no slack
    with pytest.raises(ValueError, match="mosaic 4 tiles of a 1024 canvas cannot hold resolution 272"):
        mosaic.tile_slack(1024, 4, 272)


def test_tiny_sam_mosaic_runs_one_forward_per_k2_images(tmp_path):
    sam = create_teacher("sam_tiny")
    seen: list[int] = []
    sam.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    worker = TeacherStage.__new__(TeacherStage)  # no store needed for the forward alone
    worker.settings, worker.batch_size, worker.device = FeaturizeSettings(), 8, torch.device("cpu")
    crops = torch.randint(0, 256, (9, 128, 128, 3), dtype=torch.uint8)
    keys = [f"{i:012d}" for i in range(9)]
    feats, summary = worker._forward(sam, KeyJob("sam@128", 128, 2, 256), crops, keys)
    assert summary is None
    assert feats.shape == (9, 8, 8, sam.spec.feature_dim)
    assert sum(seen) == 3  # ceil(9 / 2²) canvases for 9 images
    assert all(shape <= 2 for shape in seen)  # batch_size 8 images = 2 canvases per forward
