"""`radio sample-data --task seg|depth|stereo`: the real layouts, exact labels, disjoint
train/validation sources, and the readers of `radio eval seg|depth|correspondence` on them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from radio.cli.main import app as radio_app
from radio.evaluate.errors import EvalError
from radio.evaluate.probes.datasets import read_depth_split, read_pairs, read_seg_split
from radio.evaluate.probes.metrics import IGNORE
from radio.shards import densedata
from radio.shards.pfm import read_pfm, write_pfm


def test_mosaic_windows_come_from_disjoint_source_rows():
    # sources whose pixel value is its source row / 2: a pixel's value says which row it came from
    rows = (np.arange(512)[:, None] // 2).repeat(512, 1).astype(np.uint8)
    sources = {n: rows for n in (*densedata.TEXTURES, *densedata.BACKGROUND_PHOTOS)}
    rng = np.random.default_rng(0)
    for layout in ("voronoi", "rects"):
        train, labels, edge = densedata.mosaic(rng, "train", layout, sources)
        val, _, _ = densedata.mosaic(rng, "val", layout, sources)
        assert train.max() < densedata.TRAIN_ROWS[1] // 2 and val.min() >= densedata.VAL_ROWS[0] // 2
        assert len(np.unique(labels)) >= 2 and edge.any() and not edge.all()


def test_ade_layout_labels_and_the_reader(tmp_path):
    r = CliRunner().invoke(radio_app, ["sample-data", "--task", "seg", "--images", "4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    root = tmp_path / "ADEChallengeData2016"
    assert len(list((root / "images" / "training").glob("ADE_train_*.jpg"))) == 4
    assert len(list((root / "annotations" / "validation").glob("ADE_val_*.png"))) == 1
    for data in (tmp_path, root):  # the folder holding the root, or the root itself
        train = read_seg_split(data, "train")
        assert train.layout == "ade" and train.classes == densedata.SEG_CLASSES
    from PIL import Image

    raw = np.asarray(Image.open(train.labels[0]))
    label = train.label(0)
    assert set(np.unique(raw)) <= {0, 1, 2, 3, 4} and (raw == 0).any()  # 0: the region boundaries
    assert (label[raw == 0] == IGNORE).all() and (label[raw > 0] == raw[raw > 0] - 1).all()


def test_voc_layout_reader(tmp_path):
    densedata.write_seg_data(tmp_path, train=2, val=1, layout="voc")
    val = read_seg_split(tmp_path, "val")
    assert val.layout == "voc" and len(val.classes) == 21 and len(val.images) == 1
    label = val.label(0)
    assert set(np.unique(label)) <= {0, 1, 2, 3, IGNORE} and (label == IGNORE).any()


def test_seg_layout_errors(tmp_path):
    with pytest.raises(EvalError, match=r"neither the ADE20k layout .* nor the Pascal VOC 2012 layout"):
        read_seg_split(tmp_path, "train")
    densedata.write_seg_data(tmp_path, train=1, val=1)
    (tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png").unlink()
    with pytest.raises(
        EvalError, match=r"1 file\(s\) of the train split are missing, e\.g\. .*ADE_train_00000001\.png"
    ):
        read_seg_split(tmp_path, "train")


def test_depth_files_follow_probe3d_split(tmp_path):
    s = densedata.write_depth_data(tmp_path, files=21)
    assert (s.train, s.val) == (19, 2)
    val, train = read_depth_split(tmp_path, "val"), read_depth_split(tmp_path, "train")
    assert [f.name for f in val.files] == ["motorcycle_0000_out-00000.mat", "motorcycle_0001_out-00020.mat"]
    img, depth = train.sample(0)
    assert img.shape == (*densedata.DEPTH_SIZE, 3) and img.dtype == np.uint8 and depth.shape == densedata.DEPTH_SIZE
    known = depth[depth > 0]
    assert 1.5 < known.min() and known.max() < 6.0  # the motorcycle scene lies 2-5 m from the camera


def test_stereo_layouts_and_pfm(tmp_path):
    a = np.array([[1.5, np.inf], [0.0, 2.0]], dtype=np.float32)
    write_pfm(tmp_path / "a.pfm", a)
    assert np.array_equal(read_pfm(tmp_path / "a.pfm"), a)
    densedata.write_stereo_data(tmp_path / "s", matches=50)
    pairs = read_pairs(tmp_path / "s")
    assert [p.name for p in pairs] == ["MiddEval3/trainingQ/Motorcycle", "pairs/motorcycle_shifted"]
    _, _, disp = densedata.motorcycle()
    m = pairs[0].matches
    x0, y0 = m[:, 0].astype(int), m[:, 1].astype(int)
    assert np.allclose(m[:, 2], x0 - disp[y0, x0]) and (m[:, 3] == m[:, 1]).all()
    assert len(pairs[1].matches) == 50
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match=r"empty: no pairs \(a folder with im0.png, im1.png and disp0GT.pfm"):
        read_pairs(tmp_path / "empty")
