"""MESA (issue 26 §2): the EMA student's update, its loss, the config section, training on
`tiny` with it and exporting its weights (`radio export --ema`). The SIGKILL resume with MESA on
is a case of tests/distill/test_train.py's resume test."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import ConfigError, load_pipeline
from radio.config.schema import MesaConfig
from radio.distill.adaptors import AdaptorSpec
from radio.distill.checkpoint import load_weights
from radio.distill.cpe import draw_crops
from radio.distill.final_weights import ema_state, student_state
from radio.distill.loss import KeyTarget
from radio.distill.mesa import Mesa, ema_step
from radio.distill.run import read_metrics
from radio.distill.student import Student
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store

TEACHERS = [AdaptorSpec("clip", 8, 12), AdaptorSpec("sam", None, 6)]
# one partition at 64 px: clip has a summary target, sam none
PARTITIONS = [
    (64, [KeyTarget("clip@64", "clip", (4, 4), False, True), KeyTarget("sam@64", "sam", (4, 4), True, False)])
]


def _student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student("tiny", TEACHERS, cpe_max_size=128, adaptor_hidden=16).train()


def _perturb(student: Student, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _step(mesa: Mesa, student: Student, step: int = 0, weight_total: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 64, 64, generator=g)
    crops = draw_crops(2, g)  # training-mode CPE crops: the EMA must use these, not draw its own
    out = student(x, crops=crops)
    return mesa.add_to({"total": torch.tensor(weight_total)}, step, [out], [x], [crops], PARTITIONS, (1.0,))


def test_one_update_is_decay_times_ema_plus_one_minus_decay_times_weights():
    student = _student()
    mesa = Mesa(student, MesaConfig(enabled=True, decay=0.9))
    before = {k: v.clone() for k, v in mesa.ema.state_dict().items()}
    _perturb(student, 1)
    now = {k: v.clone() for k, v in student.state_dict().items()}
    assert any(not torch.equal(before[k], now[k]) for k in now)  # the EMA is a copy, not an alias
    mesa.update()
    ema = mesa.ema.state_dict()
    for k, w in now.items():
        expected = 0.9 * before[k].double() + 0.1 * w.double()
        assert torch.allclose(ema[k].double(), expected, rtol=0, atol=1e-6), k
    mesa.update()  # the weights held still: d²·e0 + (1 − d²)·w
    for k, w in now.items():
        expected = 0.81 * before[k].double() + 0.19 * w.double()
        assert torch.allclose(mesa.ema.state_dict()[k].double(), expected, rtol=0, atol=1e-6), k


def test_ema_step_casts_low_precision_weights_into_the_float32_average():
    ema = [torch.zeros(3)]
    ema_step(ema, [torch.full((3,), 2.0, dtype=torch.bfloat16)], 0.75)
    assert ema[0].dtype == torch.float32 and torch.equal(ema[0], torch.full((3,), 0.5))


def test_loss_is_zero_when_the_ema_equals_the_student_and_only_the_student_gets_gradients():
    student = _student()
    mesa = Mesa(student, MesaConfig(enabled=True, decay=0.5, weight=2.0, outputs=("features", "summary", "backbone")))
    out = _step(mesa, student)
    names = {k for k in out if k != "total"}
    # sam has no summary target: no summary loss for it
    assert names == {"mesa:64:clip/features", "mesa:64:clip/summary", "mesa:64:sam/features", "mesa:64/backbone"}
    # same weights, same images, same CPE crops: the same outputs (1 - cos of equal vectors rounds to ~6e-8)
    assert all(float(out[k].detach()) == 0.0 for k in names - {"mesa:64:clip/summary"})
    assert float(out["mesa:64:clip/summary"].detach()) < 1e-6
    _perturb(student, 2)
    mesa.update()  # the EMA is now halfway between the old and new weights
    out = _step(mesa, student, weight_total=1.5)
    assert all(float(out[k].detach()) > 1e-4 for k in names)
    assert torch.allclose(out["total"], 1.5 + 2.0 * sum(out[k] for k in names))
    out["total"].backward()
    assert all(p.grad is not None for p in student.blocks.parameters())
    assert all(p.grad is None for p in mesa.ema.parameters())


def test_before_start_step_the_entries_are_zero_and_the_ema_does_not_run():
    student = _student()
    mesa = Mesa(student, MesaConfig(enabled=True, decay=0.5, start_step=3))
    _perturb(student, 3)
    mesa.update()
    calls = []
    mesa.ema.register_forward_hook(lambda *a: calls.append(1))
    out = _step(mesa, student, step=2)
    assert calls == [] and {k: float(v.detach()) for k, v in out.items()} == {
        "mesa:64:clip/features": 0.0,
        "mesa:64:sam/features": 0.0,
        "total": 0.0,
    }
    out = _step(mesa, student, step=3)
    assert calls == [1] and float(out["mesa:64:clip/features"].detach()) > 0


def test_mesa_section_errors_name_the_field(repo, tmp_path):
    tiny = load_pipeline(repo / "pipelines.yaml", "tiny")
    assert not any(s.mesa.enabled for s in tiny.stages)  # the demo stays fast
    for name in ("c-radio-v4-so400m", "c-radio-v4-h"):
        v4 = load_pipeline(repo / "pipelines.yaml", name)
        assert all(s.mesa == MesaConfig(enabled=True) for s in v4.stages), name
    cases = {
        "decay": (1.0, "stages.0.mesa.decay: Input should be less than 1"),
        "outputs": (
            ["features", "features"],
            "stages.0.mesa.outputs: mesa.outputs ['features', 'features']: name each output once",
        ),
        "start_step": (20, "stages.0: mesa.start_step 20 >= steps 20: MESA would never run"),
    }
    for field, (value, message) in cases.items():
        raw = tiny.model_dump(mode="json")
        raw["stages"][0]["mesa"] = {"enabled": True, field: value}
        path = tmp_path / "pipelines.yaml"
        path.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": raw}}))
        with pytest.raises(ConfigError) as e:
            load_pipeline(path)
        assert str(e.value) == f"{path}: pipelines.t.{message}"


@pytest.mark.slow
def test_tiny_trains_with_mesa_and_export_ema_gives_the_ema_weights(tiny_store, tmp_path):
    from radio.distill.trainer import train_stage

    config, path = tiny_store
    fit_store(FeatureStore(path))
    stage1 = config.stages[0].model_copy(update={"mesa": MesaConfig(enabled=True, decay=0.9)})
    config = config.model_copy(update={"out": str(tmp_path / "run"), "stages": (stage1, *config.stages[1:])})
    train_stage(config, 1, steps=4)
    records = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    mesa = sorted(k for k in records[0] if k.startswith("mesa:"))
    assert mesa == [f"mesa:128:{t}/features" for t in ("clip", "dinov2", "sam", "siglip")]
    assert all(records[0][k] == 0.0 for k in mesa)  # step 1: the EMA is the initial student
    assert all(r[k] > 0 for r in records[1:] for k in mesa)
    for r in records:  # the total is the distillation losses plus weight 1 × the MESA losses
        assert r["total"] == pytest.approx(sum(v for k, v in r.items() if "/" in k), rel=1e-5)
    weights = load_weights(tmp_path / "run" / "stage1" / "final.safetensors")
    ema, own = ema_state(weights), student_state(weights)
    assert set(ema) == set(own) and any(not torch.equal(ema[k], own[k]) for k in own)
    result = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "e"), "--ema"])
    assert result.exit_code == 0, result.output
    exported = load_weights(tmp_path / "e" / "model.safetensors")
    assert all(torch.equal(exported[f"student.{k}"], v) for k, v in ema.items())
