"""Issue 23: the weights carry the normalizers their loss used. A refit between stages is
re-projected (with a note); a resume of the same stage across a refit is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from radio.distill.checkpoint import load_checkpoint, load_weights
from radio.distill.final_weights import EXPORT_PREFIX, final_meta
from radio.distill.spaces import final_spaces
from radio.distill.trainer import DistillError, train_stage
from radio.store.layout import FeatureStore
from radio.store.normalizers import current_fingerprint, fit_store, normalizer_for

pytestmark = pytest.mark.slow


def _stop_at(step: int):
    """An ``on_step`` that sends this process SIGTERM after ``step`` (a preemption: checkpoint, stop)."""

    def on_step(record: dict) -> None:
        if record["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def test_a_refit_between_stages_is_reprojected_and_a_resume_across_it_refused(tiny_store, tmp_path, capsys):
    config, path = tiny_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)  # the session's store stays as it is
    store = FeatureStore(copy)
    fit_store(store)
    config = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(copy)}), "out": str(tmp_path / "run")}
    )
    teachers = ["clip", "dinov2", "sam", "siglip"]
    old = {t: current_fingerprint(store, t) for t in teachers}

    # Stage 1; a fit-phis during it (here without the CLI's lease) must not change what its weights record.
    def refit_midway(record: dict) -> None:
        if record["step"] == 1:
            fit_store(store, max_tars=1)

    train_stage(config, 1, steps=2, on_step=refit_midway)
    new = {t: current_fingerprint(store, t) for t in teachers}
    assert all(new[t] != old[t] for t in teachers)
    weights1 = tmp_path / "run" / "stage1" / "final.safetensors"
    tensors = load_weights(weights1)
    recorded = final_spaces(tensors, final_meta(weights1), EXPORT_PREFIX)
    assert recorded is not None and {t: s.fingerprint for t, s in recorded.items()} == old
    fit_store(store)  # back to the stage's normalizers (a known fit is made current again)
    assert {t: current_fingerprint(store, t) for t in teachers} == old

    # Stage 2 starts and is preempted after one step, in the old space; then fit-phis runs again.
    train_stage(config, 2, steps=3, on_step=_stop_at(1))
    ckpt = tmp_path / "run" / "stage2" / "checkpoint.pt"
    assert {t: r["fingerprint"] for t, r in load_checkpoint(ckpt)["normalizers"].items()} == old
    fit_store(store, max_tars=1)
    with pytest.raises(DistillError) as e:
        train_stage(config, 2, steps=3)
    assert str(e.value) == (
        f"stage 2: cannot resume {ckpt}: its clip head trained in normalizer {old['clip']}, the store's current "
        f"one is {new['clip']} (fit-phis ran since; the optimizer state is in the old space); remove {ckpt} "
        "to restart the stage from its initial weights"
    )

    # Restarted from stage 1's weights: every head is re-projected, with one note per teacher.
    ckpt.unlink()
    capsys.readouterr()
    train_stage(config, 2, steps=3)
    notes = [line for line in capsys.readouterr().err.splitlines() if "re-projected" in line]
    assert notes == [
        f"note: {t}: head re-projected from normalizer {old[t]} to {new[t]} (fit-phis ran since {weights1} was written)"
        for t in teachers
    ]
    stage2 = tmp_path / "run" / "stage2"
    moved = json.loads((stage2 / "reprojected.json").read_text())
    assert [(r["teacher"], r["from"], r["to"]) for r in moved] == [(t, old[t], new[t]) for t in teachers]
    assert load_checkpoint(stage2 / "checkpoint.pt")["reprojected"] == moved
    tensors = load_weights(stage2 / "final.safetensors")
    recorded = final_spaces(tensors, final_meta(stage2 / "final.safetensors"), EXPORT_PREFIX)
    assert recorded is not None and {t: s.fingerprint for t, s in recorded.items()} == new
    for t in teachers:
        now = normalizer_for(FeatureStore(copy), teacher=t)
        assert torch.equal(tensors[f"{EXPORT_PREFIX}normalizers.{t}.matrix"], now.matrix)
        assert torch.equal(tensors[f"{EXPORT_PREFIX}normalizers.{t}.mean"], now.mean)
