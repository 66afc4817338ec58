"""Featurize with any teacher (issue 24): one teacher of each generic family (timm, open_clip, hf
with SAM3's mosaic), a plugin installed into a temporary venv, and the one-line errors that
stop a run before any store exists."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import load_pipeline
from radio.store.inspect import verify_store

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "tests" / "plugins" / "radio_toy_teacher"


def write_pipelines(path: Path, teachers: str, targets: list[str], shards: Path, store: Path) -> Path:
    """A one-pipeline file ``any`` with ``teachers`` (YAML, indented 6) and one stage over ``targets``."""
    path.write_text(
        f"""default: any
pipelines:
  any:
    data: {{shards: ["{shards}/*.tar"]}}
    store: {{path: "{store}", shard_rows: 8, compressor: none}}
    featurize: {{seed: 0, batch_size: 8}}
    teachers:
{teachers}
    student: {{size: tiny, cpe_max_size: 512, adaptor_hidden: 64}}
    stages:
      - steps: 2
        partitions:
          - {{resolution: 128, batch_size: 4, targets: [{", ".join(targets)}]}}
        optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.0}}
        checkpoint_every: 2
    out: "{path.parent / "run"}"
"""
    )
    return path


GENERIC = {
    "timm_open_clip": {"dv3@64": (4, 4), "oc@64": (4, 4)},
    "hf_dinov3_sam3": {"hfd@64": (4, 4), "sam3@112": (8, 8)},
}


@pytest.mark.parametrize("case", list(GENERIC))
def test_featurize_with_one_teacher_of_each_generic_family(sample_shards, tmp_path, featurize_here, case):
    from test_any_teacher import tiny_dinov3_folder, tiny_open_clip_folder, tiny_sam3_folder

    if case == "timm_open_clip":
        teachers = f"""      dv3:
        model: "timm:test_vit"
        targets: {{dv3@64: {{resolution: 64}}}}
      oc:
        model: "open_clip:local-dir:{tiny_open_clip_folder(tmp_path)}"
        targets: {{oc@64: {{resolution: 64}}}}"""
    else:
        teachers = f"""      hfd:
        model: "hf:{tiny_dinov3_folder(tmp_path)}"
        targets: {{hfd@64: {{resolution: 64}}}}
      sam3:
        model: "hf:{tiny_sam3_folder(tmp_path)}"
        targets: {{sam3@112: {{resolution: 112, mosaic: 2, canvas: 224}}}}"""
    keys = list(GENERIC[case])
    path = write_pipelines(tmp_path / "p.yaml", teachers, keys, sample_shards, tmp_path / "store.zarr")
    featurize_here(load_pipeline(path))
    assert verify_store(tmp_path / "store.zarr") == []

    from radio.store.layout import FeatureStore

    store = FeatureStore(tmp_path / "store.zarr")
    assert {key: tuple(store.target(key).provenance.grid) for key in keys} == GENERIC[case]
    if case == "hf_dinov3_sam3":  # SAM3's mosaic: 2x2 tiles of 112 px on its 224 px canvas
        assert store.target("sam3@112").provenance.mosaic == 2


@pytest.mark.parametrize(
    ("model", "line"),
    [
        ("timm:no_such_model", "error: unknown teacher 'timm:no_such_model': timm has no model 'no_such_model'"),
        (
            "timm:resnet18",
            "error: timm:resnet18: cannot map outputs: timm cannot build it as a ViT "
            "(ResNet.__init__() got an unexpected keyword argument 'dynamic_img_size')",
        ),
    ],
)
def test_unknown_or_unmappable_teacher_exits_2_before_any_store(sample_shards, tmp_path, model, line):
    store = tmp_path / "store.zarr"
    teachers = f"""      t:
        model: "{model}"
        targets: {{t@64: {{resolution: 64}}}}"""
    path = write_pipelines(tmp_path / "p.yaml", teachers, ["t@64"], sample_shards, store)
    result = CliRunner().invoke(app, ["featurize", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == line
    assert not store.exists()


def _venv_with_plugin(tmp_path: Path) -> Path:
    """A venv over this interpreter's packages (a .pth line) with the toy plugin installed editable."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the venv sees radio's dependencies where this test's interpreter has them
    (Path(site) / "radio_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "radio_toy_teacher"  # a copy: an editable build writes egg-info beside it
    shutil.copytree(PLUGIN, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-e", str(source)],
        check=True,
        capture_output=True,
    )
    return python


def test_plugin_teacher_installed_in_a_venv_featurizes(sample_shards, tmp_path):
    python = _venv_with_plugin(tmp_path)
    store = tmp_path / "store.zarr"
    teachers = """      toy:
        model: toy_teacher
        targets: {toy@64: {resolution: 64}}"""
    path = write_pipelines(tmp_path / "p.yaml", teachers, ["toy@64"], sample_shards, store)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run(
        [str(python), "-m", "radio.cli", "teachers", "toy_teacher", "--json"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        dict(
            name="toy_teacher",
            library="timm",
            family="toy",
            weights=None,
            patch=16,
            resolution=64,
            canvas=False,
            summary_dim=32,
            feature_dim=32,
            parameters=50_176,
            licence="cc0-1.0",
        )
    ]
    run = subprocess.run(
        [str(python), "-m", "radio.cli", "featurize", "--config", str(path), "--workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert verify_store(store) == []
    # without the plugin, the same config is an unknown teacher: exit 2, nothing created
    shutil.rmtree(store)
    plain = CliRunner().invoke(app, ["featurize", "--config", str(path)])  # this interpreter has no plugin
    assert plain.exit_code == 2
    assert plain.stderr.startswith("error: unknown teacher 'toy_teacher' (known: ")
    assert not store.exists()
