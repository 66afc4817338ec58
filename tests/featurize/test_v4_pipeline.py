"""The C-RADIOv4 pipelines (issue 24): they validate, every teacher key's geometry holds with the
real teachers, the teachers run at each key's input on the meta device, and the so400m student
has timm's vit_so400m_patch16_radio_v4 body."""

from __future__ import annotations

import pytest
import timm
import torch
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import load_pipeline
from radio.featurize.job import provenance, select
from radio.featurize.teachers import create_teacher

V4 = ["c-radio-v4-so400m", "c-radio-v4-h"]
# target key -> (teacher grid side, teacher input side): grids match the student partitions' 16, 27, 64
GRIDS = {
    "siglip2_g@256": (16, 256),
    "siglip2_g@384": (24, 384),
    "dinov3_7b@256": (16, 256),
    "dinov3_7b@432": (27, 432),
    "dinov3_7b@1024": (64, 1024),
    "sam3@224": (16, 1008),
    "sam3@378": (27, 1008),
    "sam3@896": (64, 1008),
}


@pytest.mark.parametrize("pipeline", V4)
def test_config_validate_passes(repo, pipeline):
    result = CliRunner().invoke(
        app, ["config", "validate", "--config", str(repo / "pipelines.yaml"), "--pipeline", pipeline]
    )
    assert result.exit_code == 0, result.stderr
    assert f"{pipeline}: 3 teachers, target keys {', '.join(GRIDS)}, 3 stages" in result.stdout


def test_v4_geometry_and_teachers_on_meta_at_real_size(repo):
    config = load_pipeline(repo / "pipelines.yaml", "c-radio-v4-h")
    selection = select(config)  # validates every key's geometry with the real specs
    found = {}
    for teacher, (model, _, jobs) in selection.teachers.items():
        built = create_teacher(model, device="meta")
        for job in jobs:
            prov = provenance(config, teacher, job)
            found[job.key] = (prov.core_grid[0], prov.input_size)
            assert prov.margin == 1 and prov.grid[0] == prov.core_grid[0] + 2  # featurize.shift_margin (issue 26)
            side = prov.input_size
            out = built(torch.empty(1, 3, side, side, device="meta"))
            # a mosaic key's canvas grid holds k x k tiles; its images' grid is the key's
            assert out.features.shape[1] == side // prov.patch
    assert found == GRIDS
    for stage in config.stages:
        for key, weight in stage.loss_weights.items():
            assert key.startswith("sam3@") and weight.summary == 0.0  # NVlabs/RADIO#181


def test_so400m_student_body_is_timms_radio_v4_so400m():
    from radio.distill.student import Student, student_spec

    spec = student_spec("so400m")
    with torch.device("meta"):
        student = Student("so400m", [])
        reference = timm.create_model("vit_so400m_patch16_radio_v4", pretrained=False)
    assert (spec.dim, spec.depth, spec.heads, spec.patch) == (1152, 27, 16, 16)
    ours = sum(p.numel() for p in student.blocks.parameters())
    theirs = sum(p.numel() for p in reference.blocks.parameters())
    assert ours == theirs
    assert student.blocks[0].mlp.fc1.out_features == reference.blocks[0].mlp.fc1.out_features == 4304
