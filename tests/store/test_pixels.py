"""Student pixels in the store (``featurize.student_pixels``, `radio store add-pixels`): added to an
existing store without teachers and resumable, shown by `store info`, checked by `store verify`,
equal to phase 2's tar decode (raw exactly, jpeg within a bound), and trained on through stages 1-3."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from radio.cli.main import app
from radio.distill.data import PartitionRows
from radio.distill.pixels import decode_views
from radio.store import pixels
from radio.store.layout import FeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pixel_store(tiny_store, tmp_path_factory):
    """A copy of the session's tiny store (no pixels) with views added: jpeg at 128 and 192, raw at 256."""
    from radio.store.normalizers import fit_store

    config, path = tiny_store
    store = tmp_path_factory.mktemp("px") / "store.zarr"
    shutil.copytree(path, store)
    fit_store(FeatureStore(store))
    runner = CliRunner()
    jpeg = runner.invoke(app, ["store", "add-pixels", str(store), "-r", "128", "-r", "192", "--mode", "jpeg"])
    raw = runner.invoke(app, ["store", "add-pixels", str(store), "-r", "256", "--mode", "raw"])
    assert jpeg.exit_code == 0 and raw.exit_code == 0, jpeg.output + raw.output
    return config.model_copy(update={"store": config.store.model_copy(update={"path": str(store)})}), store


def _valid_rows(store) -> np.ndarray:
    m = FeatureStore(store).manifest().to_pydict()
    return np.array([r for r, v in zip(m["row"], m["valid"]) if v], dtype=np.int64)


def test_add_pixels_is_resumable_and_shown_by_info_and_verify(pixel_store):
    _, store = pixel_store
    fs = FeatureStore(store)
    tars = len(fs.plan.tars)
    assert pixels.pixel_resolutions(fs) == [128, 192, 256]
    assert all(pixels.pixels_completed(fs, r).all() for r in (128, 192, 256))
    again = CliRunner().invoke(app, ["store", "add-pixels", str(store)])
    assert again.exit_code == 0
    for r in (128, 192, 256):
        assert f"student pixels {r} px: 0 tars written, {tars} already complete, {tars}/{tars} done" in again.stdout
    info = CliRunner().invoke(app, ["store", "info", str(store)])
    assert info.exit_code == 0
    assert f"student pixels 256 px: raw, {tars}/{tars} tars, 196608 bytes/sample raw, 19" in info.stdout
    line = next(x for x in info.stdout.splitlines() if x.startswith("student pixels 128 px: jpeg q95"))
    stored = float(line.rsplit(", ", 1)[1].split()[0])
    assert 1000 < stored < 49152 / 2  # a JPEG view: well under the raw 128x128x3
    result = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert result.exit_code == 0 and result.stdout.strip() == f"{store}: ok"


def test_other_settings_are_refused_in_one_line(pixel_store):
    _, store = pixel_store
    result = CliRunner().invoke(app, ["store", "add-pixels", str(store), "-r", "128", "--mode", "raw"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {store}: student pixels at 128 px exist with other settings (capacity, mode, quality); "
        "pass --overwrite to rewrite them"
    )


def test_stored_views_equal_the_tar_decode_raw_exactly_jpeg_within_a_bound(pixel_store):
    _, store = pixel_store
    rows = _valid_rows(store)
    raw = PartitionRows(str(store), 256, []).images(rows)
    assert torch.equal(raw, PartitionRows(str(store), 256, [], stored_pixels=False).images(rows))
    stored = PartitionRows(str(store), 192, [])
    assert stored.pixels is not None and stored.pixels.spec.mode == "jpeg"
    jpeg = stored.images(rows).float()
    tar = PartitionRows(str(store), 192, [], stored_pixels=False).images(rows).float()
    err = (jpeg - tar).abs()
    psnr = 10 * np.log10(255.0**2 / float((err**2).mean()))
    assert float(err.mean()) < 2.0 and psnr > 35.0, (float(err.mean()), psnr)
    # the batched decode (CPU here: the same decode_jpeg call the GPU runs) matches PIL's libjpeg
    blobs = stored.pixels.read(rows[:4])
    assert isinstance(blobs, list)
    ours = decode_views(blobs).permute(0, 2, 3, 1).numpy().astype(int)
    pil = np.stack([pixels.decode_jpeg_pil(b) for b in blobs]).astype(int)
    assert ours.shape == (4, 192, 192, 3) and np.abs(ours - pil).mean() < 1.0


def test_verify_finds_a_damaged_view_and_add_pixels_repairs_it(pixel_store, tmp_path):
    _, src = pixel_store
    store = tmp_path / "store.zarr"
    shutil.copytree(src, store)
    shard = sorted((store / "pixels" / "192" / "view" / "c").rglob("*"))
    shard = [p for p in shard if p.is_file()][0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert result.exit_code == 1
    problem = next(x for x in result.stdout.splitlines() if x.startswith("problem: pixels 192 tar 0"))
    repair = f"radio store add-pixels {store} --resolution 192 --tars 0"
    assert problem.endswith(f"; run `{repair}`"), problem
    fixed = CliRunner().invoke(app, repair.split()[1:])
    assert fixed.exit_code == 0 and "student pixels 192 px: 1 tars written" in fixed.stdout
    again = CliRunner().invoke(app, ["store", "verify", str(store)])
    assert again.exit_code == 0, again.stdout


def test_distill_trains_tiny_stages_1_to_3_from_stored_pixels(pixel_store, tmp_path, monkeypatch):
    """Every partition (128, 192, 256) reads stored views: the tar path is made to fail, and the
    three stages still train with finite losses."""
    from radio.distill.trainer import train_stage

    config, _ = pixel_store
    config = config.model_copy(update={"out": str(tmp_path / "run")})

    def no_tar(self, row):
        raise AssertionError(f"row {row} decoded from its tar")

    monkeypatch.setattr(PartitionRows, "image", no_tar)
    for stage in (1, 2, 3):
        result = train_stage(config, stage, steps=2)
        assert result.end_step == 2 and np.isfinite(result.losses).all()


def test_jpeg_quality_is_bounded():
    from pydantic import ValidationError

    from radio.config.schema import FeaturizeConfig

    with pytest.raises(ValidationError, match="jpeg_quality"):
        FeaturizeConfig(jpeg_quality=100)
    assert FeaturizeConfig().student_pixels == "none" and FeaturizeConfig().jpeg_quality == 95


def test_device_jpeg_batches_carry_the_bytes_and_decode_to_the_workers_batch(pixel_store):
    """The trainer on CUDA leaves stored JPEG views to the device (nvJPEG); the same call on the
    CPU gives exactly the batch a loader worker decodes, flips included."""
    from radio.distill.data import on_device

    _, store = pixel_store
    rows = _valid_rows(store)[:6].tolist()
    items = [(r, i % 2 == 0) for i, r in enumerate(rows)]
    host = PartitionRows(str(store), 192, []).__getitems__(items)
    left = PartitionRows(str(store), 192, [], device_jpeg=True).__getitems__(items)
    assert "image" not in left and len(left["jpeg"]) == 6 and left["flips"].tolist() == [i % 2 == 0 for i in range(6)]
    assert all(b.dtype == torch.uint8 and b.ndim == 1 for b in left["jpeg"])
    assert torch.equal(on_device(left, "cpu")["image"], on_device(host, "cpu")["image"])
    # raw views, or a size without stored views, are made in the worker as before
    assert "image" in PartitionRows(str(store), 256, [], device_jpeg=True).__getitems__(items)
    assert "image" in PartitionRows(str(store), 224, [], device_jpeg=True).__getitems__(items)
