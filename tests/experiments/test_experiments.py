"""`radio experiment`: each experiment end to end in its seconds-long smoke mode, on real Ray,
Zarr and the tiny teachers; the README block it regenerates; the command's bad-input path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from radio.experiments import NAMES, run_experiment
from radio.experiments.common import Outcome, update_readme


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_writes_table_picture_and_json(name, tmp_path, ray_session):
    outcome = run_experiment(name, tmp_path, smoke=True)
    out = tmp_path / name
    result = json.loads((out / "result.json").read_text())
    assert result["name"] == name and result["smoke"] is True and result["table"] == outcome.table
    assert (out / "table.md").read_text().startswith("| ")
    assert (out / outcome.picture).stat().st_size > 1000
    assert "**Claim.**" in (out / "section.md").read_text()
    assert isinstance(outcome.agrees, bool) and outcome.verdict
    CHECKS[name](outcome, tmp_path / name)


def _phis(outcome: Outcome, out) -> None:
    from radio.store.layout import FeatureStore

    assert [r["normalization"] for r in outcome.table] == ["none", "standardize", "phis"]
    assert all(r["F geo. mean"] > 0 for r in outcome.table)
    # output_scale is applied by featurize and recorded in provenance: DINOv2's variance is ~10⁴ × the others'.
    fs = FeatureStore(out / "work" / "store.zarr")
    assert fs.target("dinov2@112").attrs["output_scale"] == 100.0 and fs.target("clip@112").attrs["output_scale"] == 1.0
    v = outcome.extra["teacher_variance"]
    assert v["dinov2"] > 1000 * max(v["clip"], v["siglip"])


def _multires(outcome: Outcome, out) -> None:
    assert len(outcome.table) == 3 and all(r["fine"] >= 0 and r["F @256 px"] > 0 for r in outcome.table)
    assert all((out / f"pca-{tag}.png").is_file() for tag in ("single", "multi", "stochastic"))
    # the stochastic student trained its stage 2 at drawn sizes of both sets
    from radio.distill.run import read_metrics

    records = read_metrics(out / "work" / "run-stochastic" / "stage2" / "metrics.jsonl")
    assert {r["size_0"] for r in records} <= {96, 128, 160, 192} and {r["size_1"] for r in records} <= {224, 256, 320}


def _mosaic(outcome: Outcome, out) -> None:
    per_k = outcome.extra["per_k"]
    for k, p in per_k.items():
        assert p["forwards"] == p["expected_forwards"], k  # one SAM forward per canvas of k² images
    assert per_k[1]["forwards"] == per_k[1]["images"] == 4 * per_k[2]["forwards"]
    # Alone on its canvas at the same place, k = 1 is the same run: equal up to fp16 storage.
    assert outcome.extra["tile_check"][1]["relative_error"] < 1e-5


def _token_merging(outcome: Outcome, out) -> None:
    methods = {(r["images"], r["method"]): r for r in outcome.table}
    assert methods[("photos", "pixel unshuffle")]["relative MSE"] is None  # lossless
    assert all(r["tokens"] == r["budget"] for r in outcome.table if r["method"] != "pixel unshuffle")
    assert 0 < methods[("document", "ToMe strided")]["relative MSE"] < 1


def _shift(outcome: Outcome, out) -> None:
    from radio.store.layout import FeatureStore

    rows = {r["targets / student"]: r for r in outcome.table}
    assert list(rows) == ["teacher", "no shift", "shift"]
    # The targets carry the injected artifact in full at its positions (fp16 storage aside).
    assert (
        abs(rows["teacher"]["artifact imitation"] - 1.0) < 0.01
        and rows["teacher"]["fidelity (artifact-free tokens)"] is None
    )
    assert all(rows[t]["fidelity (artifact-free tokens)"] > 0 for t in ("no shift", "shift"))
    prov = FeatureStore(out / "work" / "store.zarr").target("dino@112").provenance
    assert (prov.margin, prov.grid) == (1, (10, 10))  # one store with a margin for both students


CHECKS = {
    "phis_balance": _phis,
    "multires": _multires,
    "mosaic": _mosaic,
    "token_merging": _token_merging,
    "shift": _shift,
}


def test_readme_block_is_replaced_and_nothing_else(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "p.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- experiment:x:start -->\nold\n<!-- experiment:x:end -->\noutro\n")
    outcome = Outcome("x", "a claim", [{"a": 1.23456, "b": "y"}], False, "why it differs", "p.png")
    update_readme(outcome, out, readme, tmp_path / "docs" / "experiments")
    update_readme(outcome, out, readme, tmp_path / "docs" / "experiments")  # idempotent
    text = readme.read_text()
    assert text.startswith("intro\n<!-- experiment:x:start -->\n**Claim.** a claim") and text.endswith(
        "<!-- experiment:x:end -->\noutro\n"
    )
    assert "old" not in text and "| 1.235 | y |" in text and "**not reproduced**" in text
    assert "![x](docs/experiments/p.png)" in text and (tmp_path / "docs" / "experiments" / "p.png").is_file()


def test_unknown_experiment_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "radio.cli", "experiment", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert (
        proc.stderr
        == "error: unknown experiment 'nope' (known: phis_balance, multires, mosaic, token_merging, shift, all)\n"
    )
