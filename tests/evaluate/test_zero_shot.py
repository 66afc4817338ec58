"""Zero-shot: prompts as documented, and `radio eval zero-shot` end to end with the tiny CLIP."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from radio.evaluate.zero_shot import build_prompts, text_classifier, zero_shot_scores


def test_prompts_and_classifier():
    assert build_prompts(["hubble_deep_field", "coins"]) == [
        ["a photo of a hubble deep field."],
        ["a photo of a coins."],
    ]
    assert build_prompts(["a_b"], ["{name}", "art of {name}!"]) == [["a b", "art of a b!"]]
    with pytest.raises(ValueError, match="no {name} placeholder"):
        build_prompts(["x"], ["a photo"])
    table = {"p": torch.tensor([3.0, 0.0]), "q": torch.tensor([0.0, 1.0]), "r": torch.tensor([0.0, -2.0])}
    classifier = text_classifier(lambda strings: torch.stack([table[s] for s in strings]), [["p", "q"], ["r"]])
    # class 0: mean of unit vectors (1, 0) and (0, 1), renormalized
    assert torch.allclose(classifier, torch.tensor([[2**-0.5, 2**-0.5], [0.0, -1.0]], dtype=torch.float64))
    scores = zero_shot_scores(torch.tensor([[1.0, 1.0], [0.0, -5.0]]), classifier)
    assert scores.argmax(dim=1).tolist() == [0, 1]


@pytest.mark.slow
def test_cli_with_the_tiny_clip_teacher(tiny_export, labeled_set, eval_app, tmp_path):
    _, _, model, _ = tiny_export
    out = tmp_path / "zs.json"
    result = CliRunner().invoke(
        eval_app,
        [
            "eval",
            "zero-shot",
            "--model",
            str(model),
            "--data",
            str(labeled_set),
            "--teacher",
            "clip",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert r["teacher"] == "clip" and r["teacher_model"] == "clip_tiny" and r["images"] == 42
    assert r["templates"] == ["a photo of a {name}."]
    assert r["classes"][:3] == ["astronaut", "brick", "camera"]
    assert r["prompts"][r["classes"].index("hubble_deep_field")] == ["a photo of a hubble deep field."]
    assert r["prompts"][0] == ["a photo of a astronaut."]
    assert 0.0 <= r["top1"] <= r["top5"] <= 1.0

    result = CliRunner().invoke(
        eval_app,
        [
            "eval",
            "zero-shot",
            "--model",
            str(model),
            "--data",
            str(labeled_set),
            "--teacher",
            "dinov2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: dinov2_tiny has no text tower (zero-shot needs a CLIP or SigLIP teacher)"

    result = CliRunner().invoke(
        eval_app,
        [
            "eval",
            "zero-shot",
            "--model",
            str(model),
            "--data",
            str(labeled_set),
            "--template",
            "a photo",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: template 'a photo' has no {name} placeholder"
