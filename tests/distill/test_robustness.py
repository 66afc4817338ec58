"""`radio distill` and the other writing commands refuse to turn bad data into weights and say
what went wrong in one line: non-finite targets, a changed --steps, a foreign --init file, a
full disk; resume leaves no litter; weights files get the usual file mode."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from radio.cli.main import app
from radio.distill.checks import stage_targets
from radio.distill.data import global_batch
from radio.distill.run import read_metrics
from radio.store.layout import FeatureStore
from radio.store.normalizers import fit_store
from radio.store.split import split_rows

pytestmark = pytest.mark.slow


def _file_mode() -> int:
    """The mode open() gives a new file under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@pytest.fixture(scope="module")
def phis_store(tiny_store):
    config, path = tiny_store
    fit_store(FeatureStore(path))
    return config, path


def _pipelines(tmp_path: Path, config, store: Path | None = None, **stage1) -> Path:
    """A pipelines file holding ``config`` (its store ``store``, stage 1 fields overridden), out ``tmp_path/run``."""
    raw = config.model_dump(mode="json")
    raw["stages"][0].update(stage1)
    raw["out"] = str(tmp_path / "run")
    if store is not None:
        raw["store"]["path"] = str(store)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": raw}}))
    return path


def _distill(cfg: Path, *args: str):
    return CliRunner().invoke(app, ["distill", "--config", str(cfg), "--stage", "1", *args])


def _one_line(result) -> str:
    """The command's one ``error:`` line (progress lines may precede it), never a traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def _rows_of_step(store: FeatureStore, config, step: int) -> np.ndarray:
    """The store rows stage 1 trains on at ``step`` (1-based), as the trainer draws them."""
    ((_, ts),) = stage_targets(store, config, 1)
    cfg = config.stages[0]
    train = split_rows(store, [t.key for t in ts], config.eval.held_out).train
    return global_batch(
        train, cfg.partitions[0].batch_size, cfg.seed * 1000 + 1, 0, step - 1, cfg.sampling, store.plan.shard_rows
    )


# ---- 1. non-finite targets ----------------------------------------------------------------------


@pytest.mark.parametrize(("stream", "value"), [("features", np.nan), ("summary", np.inf)])
def test_a_non_finite_target_stops_at_its_step_naming_key_and_rows_and_keeps_the_last_good_checkpoint(
    phis_store, tmp_path, stream, value
):
    config, path = phis_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    store = FeatureStore(copy)
    row = int(_rows_of_step(store, config, 3)[5])
    arr = store.array("dinov2@112", stream)
    values = arr[row]
    values.flat[7] = value  # one value of one row
    arr[row] = values
    cfg = _pipelines(tmp_path, config, copy, steps=6, checkpoint_every=2)
    result = _distill(cfg)
    sdir = tmp_path / "run" / "stage1"
    assert result.exit_code == 1, result.output
    assert _one_line(result) == (
        f"error: stage 1 step 3: target dinov2@112/{stream} is not finite (NaN or inf) in store rows {row}; "
        f"stopped without writing weights; the last good checkpoint {sdir / 'checkpoint.pt'} (step 2) is kept"
    )
    assert not (sdir / "final.safetensors").exists()
    state = torch.load(sdir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["step"] for r in read_metrics(sdir / "metrics.jsonl")] == [1, 2]  # no record of the NaN step


def test_a_nan_at_the_first_step_says_there_is_no_checkpoint(phis_store, tmp_path):
    config, path = phis_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    store = FeatureStore(copy)
    rows = sorted(int(r) for r in _rows_of_step(store, config, 1)[:2])
    for r in rows:
        store.array("clip@112", "summary")[r, 0] = np.nan
    result = _distill(_pipelines(tmp_path, config, copy, steps=4, checkpoint_every=2))
    assert result.exit_code == 1
    assert _one_line(result) == (
        f"error: stage 1 step 1: target clip@112/summary is not finite (NaN or inf) in store rows "
        f"{rows[0]}, {rows[1]}; stopped without writing weights (no checkpoint yet)"
    )
    assert not (tmp_path / "run" / "stage1" / "checkpoint.pt").exists()


def test_a_diverging_loss_with_finite_targets_stops_too(phis_store, tmp_path):
    config, _ = phis_store
    cfg = _pipelines(
        tmp_path,
        config,
        steps=4,
        checkpoint_every=2,
        optimizer={"name": "adamw", "lr": 1e30, "weight_decay": 0.0, "grad_clip": 1.0},
    )
    result = _distill(cfg)
    assert result.exit_code == 1, result.output
    assert _one_line(result) == (
        "error: stage 1 step 2: loss 128:clip@112/features is not finite with finite targets "
        "(training diverged: lower the learning rate or clip gradients); stopped without "
        "writing weights (no checkpoint yet)"
    )
    assert not (tmp_path / "run" / "stage1" / "final.safetensors").exists()


# ---- 5. another --steps, "already complete" ------------------------------------------------------


def test_resume_with_another_step_count_is_refused_naming_both(phis_store, tmp_path):
    config, _ = phis_store
    cfg = _pipelines(tmp_path, config, steps=4, checkpoint_every=2)
    assert _distill(cfg, "--steps", "3").exit_code == 0  # checkpoint at step 2 and at the end (3)
    ckpt = tmp_path / "run" / "stage1" / "checkpoint.pt"
    result = _distill(cfg, "--steps", "6")
    assert result.exit_code == 2
    assert _one_line(result) == (
        f"error: stage 1: the checkpoint {ckpt} is of a run of 3 steps (at step 3), not 6; "
        "resume with --steps 3, or remove the checkpoint to start over with another step count"
    )
    result = _distill(cfg)  # the config's 4 steps: refused the same way
    assert result.exit_code == 2 and "is of a run of 3 steps (at step 3), not 4;" in result.stderr
    result = _distill(cfg, "--steps", "3")
    assert result.exit_code == 0
    final = tmp_path / "run" / "stage1" / "final.safetensors"
    assert result.stdout.strip() == f"stage 1 is already complete (3 steps); weights {final}"
    assert final.is_file()


# ---- 6. litter; 7. file modes --------------------------------------------------------------------


def test_resume_removes_a_dead_processs_temporary_files_and_outputs_have_the_usual_mode(phis_store, tmp_path):
    config, _ = phis_store
    cfg = _pipelines(tmp_path, config, steps=2, checkpoint_every=1)
    assert _distill(cfg, "--steps", "1").exit_code != 2
    sdir = tmp_path / "run" / "stage1"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = sdir / f".checkpoint.pt.tmp{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    (sdir / f".final.safetensors.tmp{dead.pid}").write_bytes(b"half")
    live = sdir / f".checkpoint.pt.tmp{os.getppid()}"  # a live process's file is not ours to remove
    live.write_bytes(b"in progress")
    result = _distill(cfg, "--steps", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in sdir.glob(".*")) == [live.name]
    export = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(export)])
    assert result.exit_code == 0, result.output
    for f in (
        sdir / "final.safetensors",
        sdir / "checkpoint.pt",
        sdir / "metrics.jsonl",
        export / "model.safetensors",
        export / "config.json",
    ):
        assert oct(f.stat().st_mode & 0o777) == oct(_file_mode()), f
    assert not list(export.glob(".*"))


# ---- 3. --init with what is not a student's weights ----------------------------------------------


NOT_ZIP = "not a radio checkpoint (not a torch zip archive: truncated, or another format)"


class Foreign:
    """An object a weights-only load refuses to unpickle."""


def _init_cases(tmp: Path, config, store: FeatureStore) -> dict[str, tuple[Path, str]]:
    """name → (file, the exact error line)."""
    from safetensors.torch import save_file

    from radio.distill.trainer import build_student

    cases = {}
    p = tmp / "pickle.pt"
    p.write_bytes(pickle.dumps({"model": {"w": np.zeros(3)}}))
    cases["pickle"] = (p, f"error: {p}: {NOT_ZIP}")
    p = tmp / "objects.pt"
    torch.save({"model": {}, "extra": Foreign()}, p)
    cases["torch pickle of objects"] = (
        p,
        f"error: {p}: not a radio checkpoint (it holds objects other than tensors, which radio never unpickles)",
    )
    p = tmp / "random.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    cases["random bytes .pt"] = (p, f"error: {p}: {NOT_ZIP}")
    p = tmp / "random.safetensors"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    cases["random bytes .safetensors"] = (p, f"error: {p}: not a safetensors file (header too large)")
    student = build_student(store, config)
    state = {k: v.contiguous() for k, v in student.state_dict().items()}
    good = tmp / "good.safetensors"
    save_file(state, str(good))
    p = tmp / "truncated.safetensors"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated safetensors"] = (
        p,
        f"error: {p}: not a safetensors file (incomplete metadata, file not fully covered)",
    )
    p = tmp / "shapes.safetensors"
    save_file(state | {"patch_embed.weight": torch.zeros(7, 3, 16, 16)}, str(p))
    own = tuple(state["patch_embed.weight"].shape)
    cases["wrong shapes"] = (
        p,
        f"error: {p}: weights do not fit this student (1 tensors of another shape: "
        f"patch_embed.weight (7, 3, 16, 16) != {own})",
    )
    p = tmp / "truncated.pt"
    torch.save({"model": state, "step": 1}, tmp / "whole.pt")
    p.write_bytes((tmp / "whole.pt").read_bytes()[:-200])
    cases["truncated checkpoint"] = (p, f"error: {p}: {NOT_ZIP}")
    return cases


def test_init_with_what_is_not_a_students_weights_is_one_line_exit_2(phis_store, tmp_path):
    config, path = phis_store
    cfg = _pipelines(tmp_path, config, steps=1)
    for name, (file, line) in _init_cases(tmp_path, config, FeatureStore(path)).items():
        result = _distill(cfg, "--init", str(file))
        assert result.exit_code == 2, (name, result.output)
        assert _one_line(result) == line, name
        assert "weights_only" not in result.output, name


def test_a_damaged_checkpoint_to_resume_from_is_one_line(phis_store, tmp_path):
    config, _ = phis_store
    cfg = _pipelines(tmp_path, config, steps=2)
    ckpt = tmp_path / "run" / "stage1" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    result = _distill(cfg)
    assert result.exit_code == 2
    assert _one_line(result) == f"error: {ckpt}: {NOT_ZIP}"


# ---- 4. a full disk ------------------------------------------------------------------------------


class _FillsUp(io.FileIO):
    """A file on a disk with ``room`` bytes left: a write past them raises ENOSPC (naming no file, as
    a real ``write`` does)."""

    room = 1000

    def write(self, b) -> int:
        if self.tell() + len(memoryview(b)) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def _no_space_in_weights_files(monkeypatch) -> None:
    """Fault: the checkpoint and weights writer's files fill the disk after 1000 bytes."""
    from radio.distill import checkpoint

    monkeypatch.setattr(checkpoint, "open", lambda path, mode: _FillsUp(path, "w"), raising=False)


def _no_space_in_zarr_and_objects(monkeypatch, after: int = 0) -> None:
    """Fault: every store write (Zarr's and the store's own objects) fills the disk after writing
    a few bytes of its temporary file, once ``after`` writes have gone through."""
    import zarr.storage._local as zlocal

    calls = [0]
    real_put = zlocal._put

    def put(path, value, exclusive=False):
        calls[0] += 1
        if calls[0] <= after:
            return real_put(path, value, exclusive)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zlocal._atomic_write(path, "wb", exclusive=exclusive) as f:  # zarr's own temporary file
            f.write(b"x")  # a few bytes got onto the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write_bytes = Path.write_bytes

    def write_bytes(self, data):
        if ".tmp" in self.name:  # the store's objects (manifests): a temporary file, then a rename
            with open(self, "wb") as f:
                f.write(bytes(data)[:1])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(self, data)

    monkeypatch.setattr(zlocal, "_put", put)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def _litter(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")
    )


def test_distill_on_a_full_disk_says_so_naming_the_file_and_leaves_no_temporary_file(phis_store, tmp_path, monkeypatch):
    config, _ = phis_store
    cfg = _pipelines(tmp_path, config, steps=2, checkpoint_every=1)
    _no_space_in_weights_files(monkeypatch)
    result = _distill(cfg)
    sdir = tmp_path / "run" / "stage1"
    assert result.exit_code == 1
    assert _one_line(result) == f"error: no space left on device: {sdir / 'checkpoint.pt'}"
    assert _litter(tmp_path / "run") == []


def test_torch_save_on_a_full_disk_raises_enospc_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch.save given a path says `basic_ios::clear: iostream error` on a full disk; given the
    Python file the checkpoint writer hands it, the file's ENOSPC comes through."""
    from radio.distill import checkpoint

    _no_space_in_weights_files(monkeypatch)
    with pytest.raises(OSError) as e:
        checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"w": torch.zeros(100_000)}})
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "checkpoint.pt"))
    assert list(tmp_path.iterdir()) == []


def test_export_on_a_full_disk(phis_store, tmp_path, monkeypatch):
    config, _ = phis_store
    assert _distill(_pipelines(tmp_path, config, steps=1)).exit_code == 0
    _no_space_in_weights_files(monkeypatch)
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 1
    assert _one_line(result) == f"error: no space left on device: {out / 'model.safetensors'}"
    assert _litter(tmp_path) == [] and not list(out.iterdir())


def _assert_no_space_in(result, store: Path) -> None:
    """Exit 1, one line naming the file of ``store`` that was being written, no temporary file left."""
    assert result.exit_code == 1, result.output
    line = _one_line(result)
    assert line.startswith(f"error: no space left on device: {store}/"), line
    assert _litter(store) == []


def test_fit_phis_on_a_full_disk(phis_store, tmp_path, monkeypatch):
    config, path = phis_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "normalizers")
    cfg = _pipelines(tmp_path, config, copy)
    _no_space_in_zarr_and_objects(monkeypatch)
    _assert_no_space_in(CliRunner().invoke(app, ["fit-phis", "--config", str(cfg)]), copy)


def test_compact_on_a_full_disk(phis_store, tmp_path, monkeypatch):
    config, path = phis_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    _no_space_in_zarr_and_objects(monkeypatch)
    _assert_no_space_in(CliRunner().invoke(app, ["store", "compact", str(copy), "--keys", "clip@112"]), copy)


def test_featurize_on_a_full_disk(tiny_store, tmp_path, monkeypatch):
    config, _ = tiny_store
    raw = config.model_dump(mode="json")
    store = tmp_path / "store.zarr"
    raw["store"]["path"] = str(store)
    raw["out"] = str(tmp_path / "run")
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": raw}}))
    _no_space_in_zarr_and_objects(monkeypatch)
    result = CliRunner().invoke(app, ["featurize", "--config", str(cfg)])
    assert result.exit_code == 1, result.output
    line = _one_line(result)
    assert line.startswith(f"error: no space left on device: {store}/"), line
    assert _litter(tmp_path) == []
