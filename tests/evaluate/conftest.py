"""Evaluation fixtures: a tiny student trained a few steps on the sample store and exported, a
labeled ImageFolder set of the bundled photos, and a `radio`-like app with `eval` and `viz`."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml

EXPORT_STEPS = 4  # enough for an export; kNN on the labeled set is well above chance already


@pytest.fixture(scope="session")
def tiny_export(tiny_store, tmp_path_factory):
    """``(config, store path, export folder, pipelines file)`` after `fit-phis`, stage 1 and `export`."""
    from radio.distill.export import export
    from radio.distill.trainer import train_stage
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    config, path = tiny_store
    root = tmp_path_factory.mktemp("eval")
    fit_store(FeatureStore(path))
    config = config.model_copy(update={"out": str(root / "run")})
    train_stage(config, 1, steps=EXPORT_STEPS)
    export(root / "run", root / "export", FeatureStore(path), config, 1)
    pipelines = root / "pipelines.yaml"
    pipelines.write_text(yaml.safe_dump({"default": "t", "pipelines": {"t": config.model_dump(mode="json")}}))
    return config, path, root / "export", pipelines


@pytest.fixture(scope="session")
def labeled_set(tmp_path_factory) -> Path:
    """14 classes (one per bundled photo), 6 train and 3 val views each."""
    from radio.shards.sampledata import write_labeled_data

    out = tmp_path_factory.mktemp("labeled")
    write_labeled_data(out, train_per_class=6, val_per_class=3, seed=5)
    return out


@pytest.fixture(scope="session")
def eval_app() -> typer.Typer:
    """The sub-apps registered as `radio eval` and `radio viz` (cli/main.py wires the same)."""
    from radio.cli import eval_cmd, viz_cmd

    app = typer.Typer()
    app.add_typer(eval_cmd.app, name="eval")
    app.add_typer(viz_cmd.app, name="viz")
    return app
