"""Issue 23 §4: the heads' own weight decay, and the head warm-up (new heads train alone first)."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

from radio.distill.adaptors import AdaptorSpec
from radio.distill.checkpoint import load_checkpoint, load_weights
from radio.distill.final_weights import student_state
from radio.distill.heads import is_head, param_groups
from radio.distill.student import Student
from radio.distill.trainer import _optimizer, build_student, train_stage
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store


def test_param_groups_carry_the_backbone_and_head_decays():
    student = Student("tiny", [AdaptorSpec("clip", 8, 16), AdaptorSpec("sam", None, 12)], cpe_max_size=256)
    from radio.config.schema import OptimizerConfig

    for name in ("adamw", "lamb"):
        opt = _optimizer(student, OptimizerConfig(name=name))
        groups = {g["name"]: g for g in opt.param_groups}
        assert {n: g["weight_decay"] for n, g in groups.items()} == {
            "backbone": 2e-5,
            "backbone/no_decay": 0.0,
            "heads": 5e-5,
            "heads/no_decay": 0.0,
        }
    names = {id(p): n for n, p in student.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(student, 1e-2, 3e-2)}
    assert set().union(*groups.values()) == set(names.values())  # every parameter, once
    assert sum(map(len, groups.values())) == len(names)
    assert all(is_head(n) for n in groups["heads"] | groups["heads/no_decay"])
    assert not any(is_head(n) for n in groups["backbone"] | groups["backbone/no_decay"])
    assert "adaptors.clip.features.fc2.weight" in groups["heads"]
    assert "adaptors.clip.features.fc2.bias" in groups["heads/no_decay"]
    assert {"cpe.grid", "cls_tokens", "registers", "blocks.0.norm1.weight"} <= groups["backbone/no_decay"]
    assert "blocks.0.attn.qkv.weight" in groups["backbone"]


@pytest.mark.slow
def test_head_warmup_freezes_the_backbone_and_a_resume_inside_it_is_exact(tiny_store, tmp_path):
    config, path = tiny_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    fit_store(FeatureStore(copy))
    stage1 = config.stages[0].model_copy(update={"head_warmup_steps": 3, "checkpoint_every": 100})
    config = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(copy)}), "stages": (stage1, *config.stages[1:])}
    )
    initial = build_student(FeatureStore(copy), config, stage1.seed).state_dict()

    def run(out: str):
        return config.model_copy(update={"out": str(tmp_path / out)})

    train_stage(run("a"), 1, steps=5)  # uninterrupted

    def preempt_at_2(record: dict) -> None:
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train_stage(run("b"), 1, steps=5, on_step=preempt_at_2)
    assert (stopped.stopped_by, stopped.end_step) == ("SIGTERM", 2)
    ckpt = load_checkpoint(tmp_path / "b" / "stage1" / "checkpoint.pt")
    for name, value in ckpt["model"].items():  # 2 steps into the warm-up: only the heads moved
        assert torch.equal(value, initial[name]) != is_head(name), name
    opt = ckpt["optimizer"]
    heads = {i for g in opt["param_groups"] if g["name"].startswith("heads") for i in g["params"]}
    assert set(opt["state"]) == heads  # no optimizer state for the backbone either
    train_stage(run("b"), 1, steps=5)  # resumed inside the warm-up

    a = student_state(load_weights(tmp_path / "a" / "stage1" / "final.safetensors"))
    b = student_state(load_weights(tmp_path / "b" / "stage1" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = {k for k in a if not torch.equal(a[k], initial[k])}
    assert "blocks.0.attn.qkv.weight" in changed and "adaptors.clip.features.fc2.weight" in changed  # after it: both


@pytest.mark.slow
def test_a_stage_whose_heads_all_come_from_earlier_weights_has_no_warmup(tiny_store, tmp_path, capsys):
    config, path = tiny_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    fit_store(FeatureStore(copy))
    config = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(copy)}), "out": str(tmp_path / "run")}
    )
    train_stage(config, 1, steps=1)
    start = student_state(load_weights(tmp_path / "run" / "stage1" / "final.safetensors"))
    train_stage(config, 2, steps=1)
    after = student_state(load_weights(tmp_path / "run" / "stage2" / "final.safetensors"))
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])
    assert load_checkpoint(tmp_path / "run" / "stage2" / "checkpoint.pt")["new_heads"] == []

    # Initial weights without the sam head (a teacher added since): it is new, so the stage warms up.
    partial = tmp_path / "no_sam.pt"
    torch.save({"model": {k: v for k, v in start.items() if not k.startswith("adaptors.sam.")}}, partial)
    capsys.readouterr()
    train_stage(config.model_copy(update={"out": str(tmp_path / "added")}), 2, steps=1, init=partial)
    err = capsys.readouterr().err
    assert f"note: sam: head not in {partial}: initialised at random (trained alone for the first 5 steps)" in err
    assert f"note: {partial} records no normalizers (written before radio recorded them): " in err
    added = student_state(load_weights(tmp_path / "added" / "stage2" / "final.safetensors"))
    assert torch.equal(added["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])
    assert not torch.equal(added["adaptors.clip.features.fc2.weight"], start["adaptors.clip.features.fc2.weight"])
    assert load_checkpoint(tmp_path / "added" / "stage2" / "checkpoint.pt")["new_heads"] == ["sam"]
