"""kNN classification (k=20, τ=0.07): the vote by hand on a toy, the labeled sample set, and
`radio eval knn` with a tiny export well above chance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from radio.cli.main import app as radio_app
from radio.evaluate.knn import knn_scores, topk_accuracy
from radio.shards.sampledata import PHOTOS


def test_temperature_weighted_vote_by_hand():
    train = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])  # norms differ: cosine only
    labels = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[3.0, 0.0]])
    # cosines to q: 1, 0, 1/√2, -1; k=2 keeps the first and the third
    s = knn_scores(train, labels, q, num_classes=2, k=2, temperature=0.5)
    assert s[0].tolist() == pytest.approx([math.exp(1 / 0.5), math.exp(2**-0.5 / 0.5)])
    # k=3 adds the second (class 1, cosine 0): weight exp(0) = 1
    s = knn_scores(train, labels, q, num_classes=2, k=3, temperature=0.5)
    assert s[0].tolist() == pytest.approx([math.exp(2.0), math.exp(2**-0.5 / 0.5) + 1.0])
    # at τ = 0.07 the nearest neighbour dominates; k larger than the bank uses the whole bank
    s = knn_scores(train, labels, q, num_classes=2, k=20)
    assert s[0].tolist() == pytest.approx([math.exp(1 / 0.07) + math.exp(-1 / 0.07), math.exp(2**-0.5 / 0.07) + 1.0])


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, (1, 2, 5)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: 1.0}


def test_sample_data_labeled_layout(tmp_path):
    result = CliRunner().invoke(radio_app, ["sample-data", "--labeled", "--images", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for split, n in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == sorted(PHOTOS)
        assert all(len(list((tmp_path / split / c).glob("*.jpg"))) == n for c in PHOTOS)
    a, b = sorted((tmp_path / "train" / "chelsea").glob("*.jpg"))
    assert a.read_bytes() != b.read_bytes()  # different views of one photo


@pytest.mark.slow
def test_cli_student_is_well_above_chance(tiny_export, labeled_set, eval_app):
    _, _, model, _ = tiny_export
    result = CliRunner().invoke(eval_app, ["eval", "knn", "--model", str(model), "--data", str(labeled_set)])
    assert result.exit_code == 0, result.output
    r = json.loads((model / "eval" / "knn.json").read_text())
    chance = 1 / len(PHOTOS)
    assert (r["train"], r["val"], r["k"], r["temperature"], r["resolution"]) == (84, 42, 20, 0.07, 128)
    assert r["top1"] > 3 * chance, r
    assert r["top5"] >= r["top1"]
    # a teacher head's summary works too
    result = CliRunner().invoke(
        eval_app, ["eval", "knn", "--model", str(model), "--data", str(labeled_set), "--adaptor", "dinov2"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((model / "eval" / "knn-dinov2.json").read_text())["model"].endswith("[dinov2]")


def test_cli_refuses_a_folder_without_splits(eval_app, tmp_path):
    result = CliRunner().invoke(eval_app, ["eval", "knn", "--teacher", "dinov2_tiny", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path}: no train/ folder (expected ImageFolder layout DATA/{{train,val}}/CLASS/*.jpg)"
    )
