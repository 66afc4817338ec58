"""`radio eval seg`: a real signal on the texture set, the ADE20k path exactly as README documents
it (an export, its baselines, JSON), the crop check, and the schedule."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from radio.cli.main import app as radio_app
from radio.evaluate.encoders import load_teacher
from radio.evaluate.errors import EvalError
from radio.evaluate.probes import seg as S
from radio.evaluate.probes.backbone import TeacherBackbone, four_layers, parse_layers
from radio.evaluate.probes.common import check_crop, warmup_poly, whole_size
from radio.evaluate.probes.datasets import read_seg_split
from radio.shards.densedata import write_seg_data


@pytest.fixture(scope="module")
def texture_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("textures")
    write_seg_data(out, train=24, val=6, seed=0)
    return out


def test_linear_probe_on_a_random_teacher_beats_chance(texture_set):
    """A real signal: random-init DINOv2-tiny features separate brick, grass, gravel and photo."""
    train, val = read_seg_split(texture_set, "train"), read_seg_split(texture_set, "val")
    s = S.SegSettings(crop=64, iterations=60, warmup=5, batch_size=8, lr=1e-2, layers="0,1", scale_range=(1.0, 1.0))
    bb = TeacherBackbone(load_teacher("dinov2_tiny", device="cpu"))
    probe = S.probe(bb, "model", train, val, s)
    chance = S.score_from_confusion("chance", "chance", [], S.chance_confusion(train, val, s), val.classes)
    assert chance.miou < 0.15  # one class of four predicted everywhere
    assert probe.miou > chance.miou + 0.07, (probe.miou, chance.miou)
    assert probe.pixel_accuracy > chance.pixel_accuracy
    assert sum(v is not None and v > 0.05 for v in probe.per_class_iou.values()) >= 3


def test_eval_seg_on_the_ade20k_layout_with_an_export(tiny_export, tmp_path):
    _, _, export, _ = tiny_export
    write_seg_data(tmp_path, train=3, val=2, seed=1)
    out = tmp_path / "seg.json"
    args = ["eval", "seg", "--data", str(tmp_path / "ADEChallengeData2016"), "--model", str(export)]
    r = CliRunner().invoke(radio_app, [*args, "--crop", "32", "--iterations", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    kinds = [row["kind"] for row in res["rows"]]
    assert kinds[:2] == ["model", "random-init"] and kinds[-1] == "chance" and "teacher" in kinds
    assert res["layout"] == "ade" and res["mask_resolution"] == "full label resolution"
    assert res["classes"] == ["brick", "grass", "gravel", "background"] and res["val"] == 2
    for row in res["rows"]:
        assert 0.0 <= row["miou"] <= 1.0 and list(row["per_class_iou"]) == res["classes"]
        # scored at full label resolution: every labeled pixel of the 120 x 150 masks is counted
        assert 0 < sum(map(sum, row["confusion"])) <= 2 * 120 * 150
    assert res["settings"]["crop"] == 32 and "mIoU" in r.output


def test_crop_must_be_a_multiple_of_the_patch(tmp_path):
    write_seg_data(tmp_path, train=1, val=1)
    r = CliRunner().invoke(
        radio_app, ["eval", "seg", "--data", str(tmp_path), "--teacher", "dinov2_tiny", "--crop", "500"]
    )
    assert r.exit_code == 2 and r.output.strip() == "error: --crop 500 is not a positive multiple of the patch size 16"
    with pytest.raises(EvalError, match="--crop 0 is not a positive multiple of the patch size 14"):
        check_crop(0, 14)


def test_geometry_and_schedule():
    assert whole_size(120, 150, 64, 16) == (64, 80) and whole_size(500, 741, 512, 16) == (512, 752)
    lrs = [warmup_poly(k, 4, 12) for k in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert four_layers(12) == [2, 5, 8, 11] and four_layers(2) == [0, 0, 1, 1]
    assert parse_layers("-1,0", 4) == [3, 0] and parse_layers("last", 4) == [3]
    with pytest.raises(EvalError, match=r"--layers '7': block indices must be within \[-4, 3\]"):
        parse_layers("7", 4)


def test_mask_resolution_full_counts_every_labeled_pixel(texture_set):
    val = read_seg_split(texture_set, "val")
    bb = TeacherBackbone(load_teacher("dinov2_tiny", device="cpu"))
    head = S.BNHead(sum(bb.dims([1])), len(val.classes)).eval()
    labeled = sum(int((val.label(i) != 255).sum()) for i in range(len(val.images)))
    full = S.evaluate_head(bb, head, val, S.SegSettings(crop=64, mask_resolution="full"), [1])
    small = S.evaluate_head(bb, head, val, S.SegSettings(crop=64, mask_resolution="input"), [1])
    assert int(full.sum()) == labeled  # 120 x 150 masks, boundaries left out
    assert int(small.sum()) < 64 * 80 * len(val.images) < labeled  # scored on the 64 x 80 input grid
