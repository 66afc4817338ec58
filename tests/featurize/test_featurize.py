"""`radio featurize` end to end on real tars, real Ray and a real Zarr store.

One shard set with every kind of bad input (corrupt, truncated, missing, zero-byte, tiny and
bomb images, CMYK / 16-bit / RGBA / grayscale ones, a truncated tar) is featurized three ways:
uninterrupted with one worker, with two workers at once, and killed with SIGKILL then resumed.
All three stores must be equal array by array, bit by bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import load_pipeline
from radio.featurize.job import run_featurize
from radio.shards.sampledata import CORRUPT_KINDS, EXOTIC_KINDS, write_sample_data
from radio.shards.tar import ShardReader
from radio.store.inspect import verify_store
from radio.store.layout import FeatureStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TRUNCATED = "00000003.tar"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_sample_data(out, images=20, shard_size=10, seed=5, corrupt=len(CORRUPT_KINDS), exotic=len(EXOTIC_KINDS))
    tar = out / TRUNCATED
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) * 2 // 3])  # cut inside a member
    return out


def _config(repo, shards, store):
    return load_pipeline(
        repo / "pipelines.yaml",
        "tiny",
        data=str(shards / "*.tar"),
        store=str(store),
        out=str(Path(store).parent / "run"),
    )


@pytest.fixture(scope="module")
def uninterrupted(repo, shards, tmp_path_factory, ray_session):
    store = tmp_path_factory.mktemp("a") / "store.zarr"
    report = run_featurize(_config(repo, shards, store), workers=1)
    return store, report


def _arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    out = {}
    for key in root["targets"].group_keys():
        g = root["targets"][key]
        for name, arr in g.arrays():
            out[f"{key}/{name}"] = arr[:]
        for name, arr in g["moments"].arrays():
            out[f"{key}/moments/{name}"] = arr[:]
    if "pixels" in root:  # student pixels (featurize.student_pixels): every resolution's arrays
        for r, px in root["pixels"].groups():
            out |= {f"pixels/{r}/{name}": arr[:] for name, arr in px.arrays()}
    return out


def _manifests(path: Path) -> dict[str, dict]:
    return {p.name: pq.read_table(p).to_pydict() for p in sorted((path / "manifest").glob("*.parquet"))}


def _assert_same_store(a: Path, b: Path) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for name in xa:
        assert xa[name].dtype == xb[name].dtype and np.array_equal(xa[name], xb[name]), name
    assert _manifests(a) == _manifests(b)


def test_bad_input_completes_and_every_good_sample_is_kept(uninterrupted, shards):
    store_path, report = uninterrupted
    assert not report.failed
    assert [r.tar_index for r in report.truncated] == [3] * 4  # every teacher saw the truncated tar
    assert not report.ok
    store = FeatureStore(store_path)
    manifest = store.manifest().to_pylist()
    expected = {}
    for tar in sorted(shards.glob("*.tar")):
        for s in ShardReader(str(tar)):
            expected[s.key] = s.reason
    assert {r["key"]: r["reason"] for r in manifest} == expected
    reasons = sorted(r["reason"] for r in manifest if r["reason"])
    assert set(CORRUPT_KINDS) <= set(reasons)
    assert all(r["valid"] == (r["reason"] is None) for r in manifest)
    assert sum(r["valid"] for r in manifest) == sum(v is None for v in expected.values())
    # Every valid row has a crop box inside its image; invalid rows have none.
    for r in manifest:
        if r["valid"]:
            assert 0 <= r["crop_x"] and r["crop_x"] + r["crop_w"] <= r["width"]
            assert 0 <= r["crop_y"] and r["crop_y"] + r["crop_h"] <= r["height"]
        else:
            assert r["crop_w"] is None and r["crop_h"] is None
    assert set(store.target_keys) == {
        "clip@112",
        "clip@168",
        "siglip@112",
        "siglip@168",
        "dinov2@112",
        "dinov2@168",
        "sam@64",
        "sam@128",
        "sam@192",
        "sam@256",
    }
    for key in store.target_keys:
        assert store.completed(key).all()
    assert store.array("sam@128", "features").shape[1:] == (8, 8, store.target("sam@128").feature_dim)
    assert "summary" not in store.root["targets"]["sam@128"]
    assert verify_store(store_path) == []


def test_rerun_skips_complete_work(uninterrupted, repo, shards):
    store_path, _ = uninterrupted
    report = run_featurize(_config(repo, shards, store_path))
    assert report.items == 0 and report.skipped == 10 * 4  # 10 target keys (sam@64 included), 4 tars


def test_two_workers_lose_no_rows(uninterrupted, repo, shards, tmp_path):
    store = tmp_path / "two.zarr"
    report = run_featurize(_config(repo, shards, store), workers=2)
    assert not report.failed
    assert verify_store(store) == []  # every valid row written (finite, non-zero), markers all set
    one, two = _arrays(uninterrupted[0]), _arrays(store)
    assert one.keys() == two.keys()
    for name in one:
        # Two workers run with fewer torch threads each, which may change the last bits of a sum.
        assert np.allclose(one[name], two[name], rtol=1e-2, atol=1e-3), name
        assert np.array_equal(one[name] != 0, two[name] != 0) or "moments" in name, name
    assert _manifests(uninterrupted[0]) == _manifests(store)


def test_teachers_that_do_not_fit_together_run_in_passes_to_the_same_store(
    uninterrupted, repo, shards, tmp_path, monkeypatch
):
    from radio.featurize import graph
    from radio.featurize.job import select

    config = _config(repo, shards, tmp_path / "passes.zarr")
    # as run_on_ray asks for them: CPU teachers, random init
    hosts = [
        graph.teacher_memory(model, tuple(keys), config.featurize.batch_size, on_gpu=False, loads_weights=False)[0]
        for model, _, keys in select(config).teachers.values()
    ]
    real = graph.ClusterMemory.of_ray()
    # The fault: a cluster with room for two teachers' actors at a time, not four.
    small = graph.ClusterMemory(total=2.2 * max(hosts), largest=real.largest, gpus=real.gpus)
    monkeypatch.setattr(graph.ClusterMemory, "of_ray", classmethod(lambda cls: small))
    notes: list[str] = []
    report = run_featurize(config, workers=1, on_note=notes.append)
    assert not report.failed and [r.tar_index for r in report.truncated] == [3] * 4
    assert sum("the teachers run in 2 passes" in n for n in notes) == 1, notes
    _assert_same_store(uninterrupted[0], tmp_path / "passes.zarr")


def _featurize_cmd(repo, shards, store, config: Path | None = None, teachers: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "radio.cli",
        "featurize",
        "--config",
        str(config or repo / "pipelines.yaml"),
        "--data",
        str(shards / "*.tar"),
        "--store",
        str(store),
        "--out",
        str(Path(store).parent / "run"),
        *[a for t in teachers for a in ("--teacher", t)],
    ]


def _kill_then_resume(
    cmd: list[str], store: Path, reference: Path, markers: int, kill_after: int = 3, strict: bool = True
) -> None:
    """Run ``cmd``, SIGKILL it once ``kill_after`` of the run's ``markers`` (tar, key) completion
    markers exist, run it again: the store equals ``reference`` bit by bit. ``strict``: the resume
    must still have the truncated tar to do (and report)."""
    env = os.environ | {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    # Own session: SIGKILL reaches the driver and the Ray processes it started.
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a loaded shared machine can take minutes to start Ray and the teachers
    while time.time() < deadline and proc.poll() is None:
        done = list(store.glob("targets/*/complete/c/*"))
        if len(done) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "featurize finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # let Ray's workers notice their driver died
    partial = FeatureStore(store)
    n_done = sum(int(partial.completed(k).sum()) for k in partial.target_keys)
    assert 0 < n_done < markers, "the kill must land part-way"
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    # 1: the truncated tar is reported, all else done (0 when it was complete before the kill)
    assert resumed.returncode in ((1,) if strict else (0, 1)), resumed.stderr
    assert (resumed.returncode == 1) == ("truncated tar" in resumed.stdout), resumed.stdout
    _assert_same_store(reference, store)
    assert verify_store(store) == []
    result = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert result.exit_code == 0 and result.stdout.strip() == f"{store}: ok"


def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, repo, shards, tmp_path):
    store = tmp_path / "killed.zarr"
    _kill_then_resume(_featurize_cmd(repo, shards, store), store, uninterrupted[0], 9 * 4)


# ---- featurize.crops_per_image: K rows per image -------------------------------------------------

K2_KEYS = ("clip@112",)  # one key: a kill test's cost is two Ray and teacher start-ups


@pytest.fixture(scope="module")
def k2_pipelines(repo, tmp_path_factory) -> Path:
    """pipelines.yaml with the tiny pipeline's ``featurize.crops_per_image: 2``."""
    import yaml

    doc = yaml.safe_load((repo / "pipelines.yaml").read_text())
    doc["pipelines"]["tiny"]["featurize"]["crops_per_image"] = 2
    path = tmp_path_factory.mktemp("k2") / "pipelines.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def uninterrupted_k2(k2_pipelines, shards, tmp_path_factory, ray_session):
    store = tmp_path_factory.mktemp("k2a") / "store.zarr"
    config = load_pipeline(
        k2_pipelines, "tiny", data=str(shards / "*.tar"), store=str(store), out=str(store.parent / "run")
    )
    report = run_featurize(config, teachers=list(K2_KEYS), workers=1)
    return store, report


def test_two_crops_per_image_give_two_rows_with_distinct_boxes(uninterrupted, uninterrupted_k2):
    one, two = FeatureStore(uninterrupted[0]), FeatureStore(uninterrupted_k2[0])
    assert two.plan.crops_per_image == 2 and two.settings["crop_kind"] == "random_resized"
    assert [t.samples for t in two.plan.tars] == [t.samples for t in one.plan.tars]
    assert all(t2.rows >= 2 * t1.samples for t1, t2 in zip(one.plan.tars, two.plan.tars))
    rows = two.manifest().to_pylist()
    assert len(rows) == 2 * len(one.manifest())
    by_image: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        by_image.setdefault((r["tar_index"], r["ordinal"]), []).append(r)
    for crops in by_image.values():
        assert [c["crop_index"] for c in crops] == [0, 1]
        assert crops[1]["row"] == crops[0]["row"] + 1 and two.plan.image_rows([crops[1]["row"]])[0] == crops[0]["row"]
        assert len({c["valid"] for c in crops}) == 1 and len({c["key"] for c in crops}) == 1
        if crops[0]["valid"]:
            boxes = [(c["crop_x"], c["crop_y"], c["crop_w"], c["crop_h"]) for c in crops]
            assert boxes[0] != boxes[1]
            for c in crops:
                assert c["crop_x"] + c["crop_w"] <= c["width"] and c["crop_y"] + c["crop_h"] <= c["height"]
    # the two crops of an image are different teacher inputs: different targets
    feats = zarr.open_array(str(uninterrupted_k2[0] / "targets" / "clip@112" / "features"), mode="r")
    first = next(c for c in by_image.values() if c[0]["valid"])
    assert not np.array_equal(feats[first[0]["row"]], feats[first[1]["row"]])
    # phase 2 reads each row's own w x h box (squashed to the square side), not the image's first
    from radio.distill.data import PartitionRows

    student = PartitionRows(str(uninterrupted_k2[0]), 64, [])
    a, b = (student.image(c["row"]) for c in first)
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)
    assert verify_store(uninterrupted_k2[0]) == []
    info = CliRunner().invoke(app, ["store", "info", str(uninterrupted_k2[0])])
    assert info.exit_code == 0
    n_one = len(one.manifest())
    assert f"{n_one} samples (2 crops, i.e. rows, each)" in info.stdout.replace("\n", " ")


def test_sigkill_then_resume_with_two_crops_per_image(uninterrupted_k2, k2_pipelines, repo, shards, tmp_path):
    store = tmp_path / "killed.zarr"
    cmd = _featurize_cmd(repo, shards, store, k2_pipelines, K2_KEYS)
    _kill_then_resume(cmd, store, uninterrupted_k2[0], len(K2_KEYS) * 4, kill_after=1, strict=False)


def test_distill_trains_on_a_two_crop_store(uninterrupted_k2, k2_pipelines, shards, tmp_path):
    """Phase 2 end to end on a ``crops_per_image: 2`` store: fit-phis, then a stage that trains,
    checkpoints and finishes with finite losses (the sampler draws one crop per image and epoch)."""
    import shutil

    import yaml

    from radio.distill.trainer import train_stage
    from radio.store.normalizers import fit_store

    doc = yaml.safe_load(k2_pipelines.read_text())
    tiny = doc["pipelines"]["tiny"]
    only_clip = [{"resolution": 128, "batch_size": 4, "targets": list(K2_KEYS)}]
    tiny["stages"] = [tiny["stages"][0] | {"partitions": only_clip, "checkpoint_every": 2}]
    tiny["teachers"] = {"clip": tiny["teachers"]["clip"]}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    store = tmp_path / "store.zarr"
    shutil.copytree(uninterrupted_k2[0], store)  # the module's store stays as featurize wrote it
    fit_store(FeatureStore(store))
    config = load_pipeline(path, "tiny", data=str(shards / "*.tar"), store=str(store), out=str(tmp_path / "run"))
    result = train_stage(config, 1, steps=4)
    assert result.end_step == 4 and len(result.losses) == 4 and np.isfinite(result.losses).all()


# ---- featurize.student_pixels: jpeg ----------------------------------------------------------------


@pytest.fixture(scope="module")
def px_pipelines(repo, tmp_path_factory) -> Path:
    """pipelines.yaml with the tiny pipeline's ``featurize.student_pixels: jpeg``."""
    import yaml

    doc = yaml.safe_load((repo / "pipelines.yaml").read_text())
    doc["pipelines"]["tiny"]["featurize"]["student_pixels"] = "jpeg"
    path = tmp_path_factory.mktemp("px") / "pipelines.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def uninterrupted_px(px_pipelines, shards, tmp_path_factory, ray_session):
    store = tmp_path_factory.mktemp("pxa") / "store.zarr"
    config = load_pipeline(
        px_pipelines, "tiny", data=str(shards / "*.tar"), store=str(store), out=str(store.parent / "run")
    )
    report = run_featurize(config, teachers=list(K2_KEYS), workers=1)
    return store, report


def test_sigkill_then_resume_with_student_pixels(uninterrupted_px, px_pipelines, repo, shards, tmp_path):
    """The CPU stage's pixel shards and markers resume bit-identically (compared with the targets)."""
    from radio.store import pixels

    ref = FeatureStore(uninterrupted_px[0])
    assert pixels.pixel_resolutions(ref) == [128, 192, 256]  # the tiny stages' partitions
    assert all(pixels.pixels_completed(ref, r).all() for r in (128, 192, 256))
    store = tmp_path / "killed.zarr"
    cmd = _featurize_cmd(repo, shards, store, px_pipelines, K2_KEYS)
    _kill_then_resume(cmd, store, uninterrupted_px[0], len(K2_KEYS) * 4, kill_after=1, strict=False)


def test_add_pixels_rewrites_featurizes_pixels_bit_for_bit(uninterrupted_px, tmp_path):
    """`radio store add-pixels` (manifest boxes, tar decode) and featurize's CPU stage store the same views."""
    import shutil

    store = tmp_path / "store.zarr"
    shutil.copytree(uninterrupted_px[0], store)
    result = CliRunner().invoke(app, ["store", "add-pixels", str(store), "--tars", "all"])
    assert result.exit_code == 0, result.output
    assert "student pixels 192 px: 4 tars written" in result.stdout
    a, b = _arrays(uninterrupted_px[0]), _arrays(store)
    assert a.keys() == b.keys() and any(k.startswith("pixels/") for k in a)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_a_store_with_other_crops_per_image_is_refused(uninterrupted_k2, repo, shards):
    from radio.store.objects import StoreError

    store = uninterrupted_k2[0]
    with pytest.raises(StoreError) as e:
        run_featurize(_config(repo, shards, store), teachers=list(K2_KEYS))
    assert str(e.value) == (
        f"{store}: the store was featurized with crops_per_image 2, the config says 1; "
        "its rows are laid out per crop: use a new --store"
    )


def test_verify_reports_a_damaged_store(uninterrupted, tmp_path):
    import shutil

    store = tmp_path / "damaged.zarr"
    shutil.copytree(uninterrupted[0], store)
    arr = zarr.open_array(str(store / "targets" / "clip@112" / "features"), mode="r+")
    first = FeatureStore(store).manifest().to_pylist()
    row = next(r["row"] for r in first if r["valid"])
    shard = (row // 8) * 8
    block = arr[shard : shard + 8]
    block[row - shard, 0, 0, 0] = np.nan
    arr[shard : shard + 8] = block
    (store / "manifest" / "00000001.parquet").unlink()
    result = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert "problem: clip@112 tar 0 (00000000.tar): non-finite features in 1 valid rows" in lines
    assert any(
        line.startswith("problem: ") and "tar 1 (00000001.tar): marked complete but has no manifest" in line
        for line in lines
    )


def test_store_info_lists_keys_and_provenance(uninterrupted):
    result = CliRunner().invoke(app, ["store", "info", str(uninterrupted[0]), "--json"])
    assert result.exit_code == 0
    import json

    info = json.loads(result.stdout)
    keys = {k["key"]: k for k in info["keys"]}
    sam = keys["sam@128"]["provenance"]
    assert sam["mosaic"] == 2 and sam["grid"] == [8, 8] and sam["summary_dim"] is None and sam["input_size"] == 256
    clip = keys["clip@168"]
    assert clip["provenance"]["weights"] == "random-init" and clip["complete_tars"] == 4
    assert (
        clip["raw_bytes_per_sample"]
        == 12 * 12 * clip["provenance"]["feature_dim"] * 2 + clip["provenance"]["summary_dim"] * 2
    )


def test_user_mistakes_are_one_line(repo, shards, tmp_path):
    runner = CliRunner()
    base = [
        "featurize",
        "--config",
        str(repo / "pipelines.yaml"),
        "--data",
        str(shards / "*.tar"),
        "--store",
        str(tmp_path / "s.zarr"),
    ]
    result = runner.invoke(app, [*base, "--teacher", "nope"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --teacher 'nope' matches no teacher or target key (known: clip, clip@112,")
    result = runner.invoke(app, [*base, "--teacher", "clip", "--mosaic", "4"])
    assert result.exit_code == 2
    assert (
        result.stderr.strip() == "error: --mosaic 4 fits no selected target key; no selected key is a canvas (SAM) key"
    )
    result = runner.invoke(app, [*base, "--mosaic", "3"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: --mosaic 3 must be a power of two (1, 2, 4, ...)"


def test_local_run_names_the_file_that_holds_rays_log_lines(uninterrupted):
    _, report = uninterrupted
    assert report.ray_log is not None and Path(report.ray_log).is_file()
    assert Path(report.ray_log).parent.name == "logs" and Path(report.ray_log).name.startswith("featurize-")
