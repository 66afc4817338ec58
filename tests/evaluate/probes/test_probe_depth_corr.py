"""`radio eval depth` and `radio eval correspondence`: heads and matching by hand, and both
commands on the sample layouts."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from radio.cli.main import app as radio_app
from radio.evaluate.errors import EvalError
from radio.evaluate.probes.backbone import TeacherBackbone, TimmBackbone, create_timm
from radio.evaluate.probes.correspondence import match_points
from radio.evaluate.probes.depth import DepthSettings, DPTHead, sig_loss, to_depth
from radio.shards.densedata import write_depth_data, write_stereo_data


def test_bins_and_sig_loss():
    s = DepthSettings(bins=4, min_depth=0.0, max_depth=8.0)  # centres 1, 3, 5, 7
    logits = torch.full((1, 4, 1, 2), -1e4)
    logits[0, 2, 0, 0] = logits[0, 0, 0, 1] = 1e4
    assert to_depth(logits, s).tolist() == [[[5.0, 1.0]]]
    t = torch.tensor([1.0, 2.0, 4.0])
    valid = torch.ones(3, dtype=torch.bool)
    assert float(sig_loss(3 * t, t, valid, lam=1.0)) == pytest.approx(0.0, abs=1e-3)  # scale-invariant
    assert float(sig_loss(t, t, valid)) == pytest.approx(0.0, abs=1e-3)
    assert DPTHead([8, 8, 8, 8], 1)([torch.rand(2, 8, 3, 5)] * 4).shape == (2, 1, 12, 20)


def test_nearest_neighbour_matching_by_hand():
    f0 = torch.randn(4, 4, 32)
    centres = torch.tensor([[(c + 0.5) * 16 - 0.5, (r + 0.5) * 16 - 0.5] for r in range(4) for c in range(4)])
    pred = match_points(f0, f0, centres.double(), (64, 64), (64, 64), (64, 64), (64, 64))
    assert torch.allclose(pred, centres.double())
    # view 1 = view 0 moved one patch right: every match moves 16 px (the last column has no twin)
    f1 = torch.zeros_like(f0)
    f1[:, 1:] = f0[:, :-1]
    pred = match_points(f0, f1, centres.double(), (64, 64), (64, 64), (64, 64), (64, 64))
    inner = centres[:, 0] < 48
    assert torch.allclose(pred[inner], centres.double()[inner] + torch.tensor([16.0, 0.0], dtype=torch.float64))


def test_intermediate_layers_of_teachers_and_timm(tmp_path):
    x = torch.rand(2, 3, 32, 48)
    t = TeacherBackbone(__import__("radio.evaluate.encoders", fromlist=["x"]).load_teacher("dinov2_tiny"))
    first, last = t.layers(x, [0, t.depth - 1])
    assert first.shape == last.shape == (2, 2, 3, 48) and not torch.allclose(first, last)
    assert torch.equal(last, t.teacher(t.teacher.normalize(torch.nn.functional.interpolate(
        x, size=(28, 42), mode="bicubic", antialias=True).clamp(0, 1))).features)  # fmt: skip
    m = TimmBackbone(create_timm("vit_tiny_patch16_224", None, torch.device("cpu")), "vit_tiny")
    grids = m.layers(x, [0, 11])
    assert m.unit == 16 and [g.shape for g in grids] == [(2, 2, 3, 192)] * 2
    # a weights file (safetensors) loads into a differently seeded model: the same grids
    from safetensors.torch import save_file

    save_file(m.model.state_dict(), tmp_path / "w.safetensors")
    other = create_timm("vit_tiny_patch16_224", str(tmp_path / "w.safetensors"), torch.device("cpu"), seed=5)
    assert torch.equal(TimmBackbone(other, "vit_tiny").layers(x, [11])[0], grids[1])
    with pytest.raises(EvalError, match="--weights nope.safetensors: no such file"):
        create_timm("vit_tiny_patch16_224", "nope.safetensors", torch.device("cpu"))


def test_eval_depth_on_the_nyu_layout(tmp_path):
    write_depth_data(tmp_path, files=21)
    out = tmp_path / "d.json"
    base = ["eval", "depth", "--data", str(tmp_path), "--teacher", "dinov2_tiny", "--crop", "48", "--iterations", "2"]
    r = CliRunner().invoke(radio_app, [*base, "--head", "linear", "--loss", "l1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [x["kind"] for x in rows] == ["model", "chance"] and rows[0]["layers"] == [0, 0, 1, 1]
    assert all(x["rmse"] > 0 and 0 <= x["delta1"] <= 1 for x in rows)
    r = CliRunner().invoke(radio_app, [*base, "--crop", "40"])
    assert r.exit_code == 2 and r.output.strip() == "error: --crop 40 is not a positive multiple of the patch size 16"


def test_eval_correspondence_on_the_stereo_layouts(tmp_path):
    write_stereo_data(tmp_path, matches=100)
    out = tmp_path / "c.json"
    args = ["eval", "correspondence", "--data", str(tmp_path), "--teacher", "dinov2_tiny", "--resolution", "128"]
    r = CliRunner().invoke(radio_app, [*args, "--max-matches", "300", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert row["matches"] == 400 and list(row["per_pair"]) == res["pairs"]
    recall = list(row["recall"].values())
    assert recall == sorted(recall) and recall[-1] > recall[0]
    r = CliRunner().invoke(radio_app, [*args[:-1], "100"])
    assert (
        r.exit_code == 2
        and r.output.strip() == "error: --resolution 100 is not a positive multiple of the patch size 16"
    )
