"""`radio eval fidelity` on a tiny export: the command's numbers are the library's on the same rows."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import radio
from radio.distill.checks import stage_targets
from radio.distill.data import PartitionRows, collate
from radio.distill.loss import align_features
from radio.evaluate.fidelity import geometric_mean, key_fidelity
from radio.store.layout import FeatureStore
from radio.store.normalizers import normalizer_for
from radio.store.split import split_rows

pytestmark = pytest.mark.slow


def test_command_equals_key_fidelity_on_held_out_rows(tiny_export, eval_app, tmp_path):
    config, path, model_dir, pipelines = tiny_export
    out = tmp_path / "fidelity.json"
    result = CliRunner().invoke(
        eval_app,
        [
            "eval",
            "fidelity",
            "--model",
            str(model_dir),
            "--config",
            str(pipelines),
            "--json",
            str(out),
            "--batch-size",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "geometric mean" in result.stdout
    r = json.loads(out.read_text())

    # the same rows by hand: the held-out rows, all keys of stage 1, the loss's resizing
    store = FeatureStore(path)
    ((resolution, keys),) = stage_targets(store, config, 1)
    held = split_rows(store, [t.key for t in keys], config.eval.held_out).held_out
    assert r["rows"] == "held-out" and r["row_ids"] == held.tolist() and len(held) == config.eval.held_out
    data = PartitionRows(str(path), resolution, keys)
    batch = collate([data[(int(row), False)] for row in held])
    outputs = radio.load(model_dir)(batch["image"])
    assert [(k["resolution"], k["key"]) for k in r["keys"]] == [(resolution, t.key) for t in keys]
    for t, got in zip(keys, r["keys"]):
        pred = align_features(outputs.adaptors[t.teacher].features, t.grid, t.exact_grid, t.key)
        want = key_fidelity(
            t.key, "features", batch["targets"][t.key]["features"], pred, normalizer_for(store, key=t.key)
        )
        for name in ("fidelity", "variance_ratio", "mse", "mse_normalized"):
            assert got[name] == pytest.approx(getattr(want, name), rel=1e-6), (t.key, name)
    assert r["geometric_mean"]["fidelity"] == pytest.approx(geometric_mean([k["fidelity"] for k in r["keys"]]))


def test_train_rows_and_errors(tiny_export, eval_app, tmp_path):
    config, path, model_dir, pipelines = tiny_export
    out = tmp_path / "train.json"
    runner = CliRunner()
    result = runner.invoke(
        eval_app,
        [
            "eval",
            "fidelity",
            "--model",
            str(model_dir),
            "--config",
            str(pipelines),
            "--rows",
            "train",
            "--max-rows",
            "4",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    store = FeatureStore(path)
    keys = sorted(t.key for _, ts in stage_targets(store, config, 1) for t in ts)
    assert r["row_ids"] == split_rows(store, keys, config.eval.held_out).train[:4].tolist()
    assert torch.isfinite(torch.tensor([k["fidelity"] for k in r["keys"]])).all()

    result = runner.invoke(eval_app, ["eval", "fidelity", "--model", str(tmp_path), "--config", str(pipelines)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path}: not a radio export (needs config.json and model.safetensors)"
