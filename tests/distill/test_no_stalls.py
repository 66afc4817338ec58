"""The trainer without per-step stalls (issue 27 part 4): host transfers only at log, checkpoint
and stop steps; batches prefetched unchanged; compile falls back to eager; activation
checkpointing and gradient accumulation change memory, not the update; the student's FLOPs."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from radio.distill import step_log, trainer
from radio.distill.activations import checkpoint_activations
from radio.distill.checks import stage_targets
from radio.distill.data import PartitionRows, StepBatches, collate, next_batch, on_device
from radio.distill.flops import student_flops
from radio.distill.prefetch import DevicePrefetch
from radio.distill.run import read_metrics
from radio.distill.student import AdaptorSpec, Student, StudentSpec
from radio.distill.trainer import train_stage
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store
from radio.store.split import split_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phis_store(tiny_store):
    config, path = tiny_store
    fit_store(FeatureStore(path))
    return config, path


def _stage1(config, tmp_path, name: str, **fields):
    stage = config.stages[0].model_copy(update=fields)
    return config.model_copy(update={"out": str(tmp_path / name), "stages": (stage, *config.stages[1:])})


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "stage1" / "checkpoint.pt", weights_only=True)["model"]


# ---- 1. host transfers only at log, checkpoint and stop-check steps --------------------------------


def test_the_trainer_moves_losses_to_the_host_only_at_log_checkpoint_stop_and_end_steps(
    phis_store, tmp_path, monkeypatch
):
    config, _ = phis_store
    steps_per_transfer: list[int] = []
    real = step_log.to_host

    def counted(values: torch.Tensor) -> torch.Tensor:
        if values.ndim == 2:  # the flush's [n steps, k values]; a 1-d call is the error path's
            steps_per_transfer.append(values.shape[0])
        return real(values)

    monkeypatch.setattr(step_log, "to_host", counted)
    cfg = _stage1(config, tmp_path, "run", log_every=4, checkpoint_every=3)
    result = train_stage(cfg, 1, steps=9)
    # log steps 4, 8; checkpoints 3, 6, 9 (the end): the transfers end at steps 3, 4, 6, 8, 9
    assert list(np.cumsum(steps_per_transfer)) == [3, 4, 6, 8, 9]
    records = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 10))  # still one record per step
    assert [r["total"] for r in records] == result.losses and all(np.isfinite(result.losses))

    # a stop signal that arrives between log steps (in step 5): its stop check flushes, checkpoints, exits
    steps_per_transfer.clear()
    real_lr = trainer.lr_at

    def preempted_in_step_5(step: int, *args) -> float:
        if step == 4:  # 0-based
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(step, *args)

    monkeypatch.setattr(trainer, "lr_at", preempted_in_step_5)  # the fault: a preemption
    stopped = train_stage(_stage1(config, tmp_path, "stopped", log_every=4, checkpoint_every=100), 1, steps=9)
    assert stopped.stopped_by == "SIGTERM" and stopped.end_step == 5
    assert list(np.cumsum(steps_per_transfer)) == [4, 5]
    assert torch.load(tmp_path / "stopped" / "stage1" / "checkpoint.pt", weights_only=True)["step"] == 5


# ---- 2. prefetch to the device: the same batches ------------------------------------------------


def test_prefetched_batches_equal_the_loaders_batches(phis_store):
    config, path = phis_store
    store = FeatureStore(path)
    partitions = stage_targets(store, config, 3)  # two partitions: one batch each per step
    split = split_rows(store, sorted({t.key for _, ts in partitions for t in ts}), config.eval.held_out)

    def loaders():
        out = []
        for p, (resolution, ts) in enumerate(partitions):
            sampler = StepBatches(split.train, config.stages[2].partitions[p].batch_size, 7, p, 0, 3, flip=True)
            dataset = PartitionRows(str(path), resolution, ts)
            out.append(iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)))
        return out

    direct = [[on_device(next_batch(it), "cpu") for it in its] for its in [loaders()] for _ in range(3)]
    fetched = list(DevicePrefetch(loaders(), torch.device("cpu"), 3))
    assert len(fetched) == 3 and all(t >= 0 for _, t in fetched)
    for want, (got, _) in zip(direct, fetched):
        for a, b in zip(want, got):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["row"], b["row"])
            for key in a["targets"]:
                for stream in a["targets"][key]:
                    assert torch.equal(a["targets"][key][stream], b["targets"][key][stream])


# ---- 3. compile: a failure trains eagerly, with a note; 5. accumulation ---------------------------


def test_compile_falls_back_and_accumulation_equals_the_large_batch_and_resumes_exactly(
    phis_store, tmp_path, monkeypatch, capsys
):
    config, _ = phis_store

    def broken(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("backend exploded\nsecond line")

        return fail

    monkeypatch.setattr(torch, "compile", broken)  # a fault: the compiler fails at the first call
    eager = train_stage(_stage1(config, tmp_path, "eager", compile=True, checkpoint_every=4), 1, steps=4)
    notes = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert notes == ["note: torch.compile failed (RuntimeError: backend exploded); training eagerly"]
    monkeypatch.undo()

    accumulated = train_stage(_stage1(config, tmp_path, "acc", accumulate=2, checkpoint_every=4), 1, steps=4)
    assert accumulated.losses == pytest.approx(eager.losses, rel=1e-5)
    one, two = _weights(tmp_path / "eager"), _weights(tmp_path / "acc")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)

    # resume in the middle of accumulated steps: the same weights, bit for bit
    resumed_cfg = _stage1(config, tmp_path, "resumed", accumulate=2, checkpoint_every=2)

    def stop_at_2(record: dict) -> None:
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train_stage(resumed_cfg, 1, steps=4, on_step=stop_at_2).end_step == 2
    rest = train_stage(resumed_cfg, 1, steps=4)
    assert rest.start_step == 2 and rest.losses == accumulated.losses[2:]
    again = _weights(tmp_path / "resumed")
    assert all(torch.equal(again[n], two[n]) for n in two)


def test_an_accumulation_that_does_not_divide_the_batch_and_a_bad_compile_name_the_field():
    from pydantic import ValidationError

    from radio.config.schema import StageConfig

    with pytest.raises(ValidationError, match="accumulate 3: batch size 8 does not divide into that many micro-steps"):
        StageConfig(steps=1, partitions=[{"resolution": 64, "batch_size": 8, "targets": ["a@64"]}], accumulate=3)
    with pytest.raises(ValidationError, match="compile 'maybe': use true, false or auto"):
        StageConfig(steps=1, partitions=[{"resolution": 64, "batch_size": 8, "targets": ["a@64"]}], compile="maybe")


# ---- 4. activation checkpointing ------------------------------------------------------------------


def test_activation_checkpointing_gives_the_same_gradients_and_auto_follows_the_rule():
    torch.manual_seed(0)
    student = Student("tiny", [AdaptorSpec("t", 32, 48)], adaptor_hidden=32).train()
    x = torch.rand(2, 3, 64, 64)
    grads = []
    for on in (False, True):
        student.set_grad_checkpointing(on)
        student.zero_grad()
        out = student(x, crops=torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
        (out.adaptors["t"].features.square().mean() + out.adaptors["t"].summary.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)
    assert checkpoint_activations("auto", "h", [432, 1024]) and checkpoint_activations("auto", "g", [1024])
    assert not checkpoint_activations("auto", "h", [512]) and not checkpoint_activations("auto", "l", [1024])
    assert checkpoint_activations(True, "tiny", [64]) and not checkpoint_activations(False, "g", [2048])


# ---- 6. the student's FLOPs -----------------------------------------------------------------------


def test_student_flops_match_torchs_flop_counter_forward_and_backward():
    spec = StudentSpec("small", dim=192, depth=3, heads=3, mlp_ratio=3.5)
    student = Student(spec, [], adaptor_hidden=8).train()  # no CLS/registers: prefix_tokens 0
    for block in student.blocks:  # attention as matmuls: the counter does not see CPU SDPA kernels
        block.attn.fused_attn = False
    x = torch.rand(1, 3, 112, 112)
    with FlopCounterMode(display=False) as forward:
        out = student(x, crops=torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with FlopCounterMode(display=False) as backward:
        out.features.float().square().mean().backward()
    counted = forward.get_total_flops()
    assert student_flops(spec, 112, prefix_tokens=0, backward=False) == pytest.approx(counted, rel=0.005)
    # backward: 2x the forward, less the input gradient of the first layer (the pixels need none)
    total = counted + backward.get_total_flops()
    assert student_flops(spec, 112, prefix_tokens=0) == pytest.approx(total, rel=0.005)
    recomputed = student_flops("b", 224, batch=4, recompute=True) - student_flops("b", 224, batch=4)
    assert recomputed == student_flops("b", 224, batch=4, backward=False)


def test_micro_batches_cut_every_partition_into_equal_consecutive_slices():
    from radio.distill.accumulate import micro_batches

    batch = {
        "image": torch.arange(8.0).view(8, 1, 1, 1),
        "row": torch.arange(8),
        "targets": {"k@1": {"features": torch.arange(8.0).view(8, 1, 1, 1)}},
    }
    small = {"image": torch.arange(4.0).view(4, 1, 1, 1), "row": torch.arange(4), "targets": {}}
    crops = [torch.arange(32.0).view(8, 4), torch.arange(16.0).view(4, 4)]
    parts = list(micro_batches([batch, small], crops, 2))
    assert [i for i, _, _ in parts] == [0, 1]
    assert [b[0]["row"].tolist() for _, b, _ in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b[1]["row"].tolist() for _, b, _ in parts] == [[0, 1], [2, 3]]
    assert torch.equal(parts[1][1][0]["targets"]["k@1"]["features"].flatten(), torch.arange(4.0, 8.0))
    assert torch.equal(torch.cat([c[0] for _, _, c in parts]), crops[0])
