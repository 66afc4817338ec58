"""`radio export --format timm`: timm's RADIO model gives our student's features and CLS token."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import timm
import torch

import radio
from radio.distill.adaptors import AdaptorSpec
from radio.distill.export import EXPORT_FORMAT, write_export
from radio.distill.export_timm import TIMM_VARIANTS, timm_kwargs, timm_state_dict, write_timm
from radio.distill.student import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Student

TEACHERS = [
    AdaptorSpec("clip", 16, 16),
    AdaptorSpec("siglip", 16, 16),
    AdaptorSpec("dinov2", 16, 16),
    AdaptorSpec("sam", None, 16),
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A random-init ``b`` student, exported both ways."""
    torch.manual_seed(0)
    student = Student("b", TEACHERS, cpe_max_size=2048, register_multiple=8, adaptor_hidden=32)
    # Random prefix tokens and CPE of a trained model's scale, so a wrong layout cannot hide.
    state = student.state_dict()
    out = tmp_path_factory.mktemp("export")
    arch = {"size": "b", "patch": 16, "cpe_max_size": 2048, "register_multiple": 8, "adaptor_hidden": 32}
    meta = {
        "format": EXPORT_FORMAT,
        "student": arch,
        "stage": None,
        "teachers": [asdict(t) | {"normalization": "none"} for t in TEACHERS],
    }
    write_export(out, {f"student.{k}": v for k, v in state.items()}, meta)
    return out, write_timm(state, "b", out), state


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 432])
def test_timm_model_matches_radio_load(exports, size):
    folder, path, state = exports
    ours = radio.load(folder)
    model = timm.create_model(
        TIMM_VARIANTS["b"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        **timm_kwargs(state, img_size=size),
    ).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = model.forward_features((x - mean) / std)  # timm takes normalized input
        out = ours(x)
    g = size // 16
    prefix = model.num_prefix_tokens
    assert prefix == 8  # 3 CLS + 5 registers
    features = tokens[:, prefix:].reshape(2, g, g, -1)
    assert (features - out.features).abs().max() <= 1e-4
    assert (tokens[:, 0] - out.summary[:, :768]).abs().max() <= 1e-4


def test_timm_export_refuses_a_size_timm_has_no_variant_for():
    student = Student("tiny", TEACHERS, cpe_max_size=256, adaptor_hidden=8)
    with pytest.raises(ValueError, match="timm has RADIO variants for student sizes b, l, h, g, not 'tiny'"):
        timm_state_dict(student.state_dict(), "tiny")
