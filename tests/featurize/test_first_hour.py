"""A new user's first hour with `radio featurize`: --mosaic's one meaning, the weights preflight,
a folder as --data. Everything here stops (or is checked) before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import load_pipeline
from radio.featurize.job import FeaturizeError, prepare, select
from radio.featurize.preflight import check_weights, weights_problem
from radio.shards.sampledata import write_sample_data
from radio.shards.tar import expand_shards
from radio.store.layout import StoreError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_sample_data(out, images=8, shard_size=4, seed=2)
    return out


def _tiny(repo, shards, store):
    return load_pipeline(repo / "pipelines.yaml", "tiny", data=str(shards), store=str(store))


def test_mosaic_applies_to_the_keys_it_fits_and_names_the_others(repo, shards, tmp_path):
    sel = select(_tiny(repo, shards, tmp_path / "s"), ["sam"], 4)
    assert {j.key: j.mosaic for j in sel.keys} == {"sam@64": 4, "sam@128": 2, "sam@192": 1, "sam@256": 1}
    assert sel.notes == (
        "--mosaic 4 applies to sam@64; left at their configured mosaic (resolution too large for "
        "4x4 tiles): sam@128 (128 px), sam@192 (192 px), sam@256 (256 px)",
    )
    amp = load_pipeline(repo / "pipelines.yaml", "radio-amp-b")
    sel = select(amp, ["sam"], 4)
    assert {j.key: j.mosaic for j in sel.keys} == {"sam_h@256": 4, "sam_h@432": 2, "sam_h@1024": 1}
    assert "sam_h@432 (432 px), sam_h@1024 (1024 px)" in sel.notes[0]
    assert {j.key: j.mosaic for j in select(amp, ["sam"], 2).keys} == {"sam_h@256": 2, "sam_h@432": 2, "sam_h@1024": 1}


def test_impossible_mosaic_exits_2_before_the_store_exists(repo, shards, tmp_path):
    store = tmp_path / "s.zarr"
    base = ["featurize", "--config", str(repo / "pipelines.yaml"), "--data", str(shards), "--store", str(store)]
    result = CliRunner().invoke(app, [*base, "--teacher", "sam", "--mosaic", "8"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --mosaic 8 fits no selected target key; too large for its tiles: "
        "sam@64 (64 px), sam@128 (128 px), sam@192 (192 px), sam@256 (256 px)"
    )
    result = CliRunner().invoke(app, [*base, "--teacher", "clip", "--mosaic", "4"])
    assert result.exit_code == 2
    assert (
        result.stderr.strip() == "error: --mosaic 4 fits no selected target key; no selected key is a canvas (SAM) key"
    )
    assert not store.exists()


def test_geometry_is_validated_before_any_array_is_allocated(repo, shards, tmp_path):
    from radio.featurize.job import Selection
    from radio.featurize.records import KeyJob

    config = _tiny(repo, shards, tmp_path / "s.zarr")
    good = KeyJob("sam@64", 64, 4, 256)
    for bad, message in [
        (KeyJob("sam@128", 128, 2, 512), "sam@128: canvas 512 but sam_tiny takes 256"),
        (
            KeyJob("sam@128", 128, 4, 256),
            "sam@128: mosaic 4 tiles of a 256 px canvas are 64 px, smaller than resolution 128",
        ),
    ]:
        with pytest.raises(FeaturizeError) as e:
            prepare(config, Selection({"sam": ("sam_tiny", None, (good, bad))}))
        assert str(e.value) == message
    assert not (tmp_path / "s.zarr").exists()  # not even the key that was fine


def test_a_key_with_no_complete_tar_is_replanned_without_overwrite(repo, shards, tmp_path):
    config = _tiny(repo, shards, tmp_path / "s.zarr")
    store, _ = prepare(config, select(config, ["sam@64"], 2))  # planned, never run
    assert store.target("sam@64").attrs["mosaic"] == 2
    store, items = prepare(config, select(config, ["sam@64"]))  # the config's mosaic 4: no --overwrite needed
    assert store.target("sam@64").attrs["mosaic"] == 4 and len(items) == len(store.plan.tars)
    store.mark_complete("sam@64", 0)  # now something would be lost
    with pytest.raises(
        StoreError, match=r"target key sam@64 exists with other provenance \(mosaic\); pass --overwrite"
    ):
        prepare(config, select(config, ["sam@64"], 2))
    # Without --mosaic, a key featurized with another mosaic resumes with its own.
    notes: list[str] = []
    prepare(config, select(config, ["sam@64"], 2), overwrite=True)
    store.mark_complete("sam@64", 0)
    store, items = prepare(config, select(config, ["sam@64"]), notes=notes)
    assert store.target("sam@64").attrs["mosaic"] == 2 and all(i.keys[0].mosaic == 2 for i in items)
    assert notes == [
        "sam@64 keeps the mosaic 2 it was featurized with (the config says 4); "
        "--overwrite recomputes it with the config's"
    ]


def test_weights_preflight_names_each_teacher_and_writes_no_store(repo, shards, tmp_path):
    store = tmp_path / "amp.zarr"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "radio.cli",
            "featurize",
            "--config",
            str(repo / "pipelines.yaml"),
            "-p",
            "radio-amp-b",
            "--data",
            str(shards),
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    hint = (
        f"download it into the hub cache {tmp_path / 'hub'} (HF_HUB_CACHE / HF_HOME select the cache), "
        "or set teachers.{t}.weights in the pipelines file to a local checkpoint file"
    )
    hub = "error: teacher {t} ({m}): hf-hub:{r} is not in the hub cache and HF_HUB_OFFLINE is set; " + hint
    assert proc.stderr.splitlines() == [
        hub.format(t="dfn_clip", m="dfn_clip_h14_378", r="apple/DFN5B-CLIP-ViT-H-14-378"),
        hub.format(t="siglip", m="siglip_so400m_378", r="timm/ViT-SO400M-14-SigLIP-384"),
        hub.format(t="dinov2", m="dinov2_g_reg", r="timm/vit_giant_patch14_reg4_dinov2.lvd142m"),
        "error: teacher sam (sam_h): weights file checkpoints/sam_vit_h_4b8939.pth not found; put the checkpoint "
        "there or set teachers.sam.weights in the pipelines file to its path",
    ]
    assert not store.exists() and proc.stdout == ""


def test_weights_preflight_accepts_cached_hub_repos_and_files(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snap = tmp_path / "hub" / "models--timm--vit_giant_patch14_reg4_dinov2.lvd142m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x")
    assert weights_problem("dinov2", "dinov2_g_reg", "hf-hub:timm/vit_giant_patch14_reg4_dinov2.lvd142m") is None
    assert weights_problem("sam", "sam_h", str(ckpt)) is None
    assert weights_problem("clip", "clip_tiny", None) is None
    check_weights({"dinov2": ("dinov2_g_reg", "hf-hub:timm/vit_giant_patch14_reg4_dinov2.lvd142m"), "t": ("x", None)})
    assert "open_clip tag 'openai' is not in the hub cache" in weights_problem("c", "openai_clip_l14_336", "openai")


def test_data_takes_a_folder_globs_braces_and_comma_lists(shards, tmp_path, repo):
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    assert len(tars) == 3
    assert expand_shards([str(shards)]) == tars
    assert expand_shards([f"{shards}/{{00000000..00000001}}.tar"]) == tars[:2]
    assert expand_shards([f"file://{shards}/"]) == tars
    config = load_pipeline(repo / "pipelines.yaml", "tiny", data=f"{tars[1]},{shards}/*.tar")
    assert expand_shards(config.data.shards) == [tars[1], tars[0], tars[2]]
    result = CliRunner().invoke(app, ["scan", "--config", str(repo / "pipelines.yaml"), "--data", str(shards)])
    assert result.exit_code == 0, result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["scan", "--config", str(repo / "pipelines.yaml"), "--data", str(empty)])
    assert (
        result.exit_code == 2 and result.stderr.strip() == f"error: data.shards: folder {str(empty)!r} holds no *.tar"
    )


def test_ray_lines_on_descriptor_2_go_to_the_log_file_and_ours_to_the_terminal(tmp_path, capfd):
    from radio.featurize.ray_logs import ray_output_to

    log = tmp_path / "logs" / "featurize.log"
    with ray_output_to(log):
        os.write(2, b"core_worker.cc: an actor line\n")  # as Ray's C++ core worker writes
        print("featurize: 1/1 done", file=sys.stderr)  # the driver's own progress
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert log.read_text() == "core_worker.cc: an actor line\n"
    assert "featurize: 1/1 done" in err and "after" in err and "core_worker" not in err
