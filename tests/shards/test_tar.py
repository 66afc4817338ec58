"""The shard reader: every bad input is a recorded reason, good samples are never lost."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from radio.shards.images import REASONS, ImageLimits, decode_image
from radio.shards.sampledata import CORRUPT_KINDS, EXOTIC_KINDS
from radio.shards.tar import ShardError, ShardReader, expand_shards, read_image, split_member_name


def _read_all(folder):
    out = []
    for tar in expand_shards([str(folder / "*.tar")]):
        reader = ShardReader(tar)
        out += [(tar, s) for s in reader]
        assert not reader.truncated
    return out


def test_every_bad_kind_is_recorded_and_every_good_sample_read(sample_shards):
    samples = _read_all(sample_shards)
    reasons = sorted(s.reason for _, s in samples if s.reason)
    # One bad sample of each kind the generator makes, each with its own reason.
    assert reasons == sorted(CORRUPT_KINDS)
    assert set(reasons) <= set(REASONS)
    good = [s for _, s in samples if s.valid]
    assert len(good) == 24 + len(EXOTIC_KINDS)
    for s in good:
        assert s.pixels.dtype == np.uint8 and s.pixels.ndim == 3 and s.pixels.shape[2] == 3
        assert s.uid and s.caption


def test_random_access_by_offset_equals_streaming(sample_shards):
    for tar, s in _read_all(sample_shards):
        if s.valid:
            again = read_image(tar, s.image.offset, s.image.size)
            assert np.array_equal(again, s.pixels)


def test_truncated_tar_yields_samples_before_the_break(sample_shards, tmp_path):
    tar = str(sample_shards / "00000000.tar")
    whole = list(ShardReader(tar))
    data = open(tar, "rb").read()
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    # Cut in the middle of the 9th member's data, and exactly at a member boundary.
    for cut in (members[8].offset_data + members[8].size // 2, members[9].offset):
        path = tmp_path / "cut.tar"
        path.write_bytes(data[:cut])
        reader = ShardReader(str(path))
        got = list(reader)
        assert reader.truncated and reader.error
        complete = [s for s in got if s.reason != "truncated_tar"]
        assert complete, "samples before the break must be yielded"
        for a, b in zip(complete, whole):
            assert a.key == b.key and a.reason == b.reason
            if a.valid:
                assert np.array_equal(a.pixels, b.pixels)


def test_sample_without_image_and_zero_byte_member(tmp_path):
    path = tmp_path / "x.tar"
    ok = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(ok, format="JPEG")
    with tarfile.open(path, "w") as tf:
        for name, data in [
            ("000000000000.txt", b"no image"),
            ("000000000001.jpg", b""),
            ("000000000002.JPG", ok.getvalue()),
            ("000000000002.txt", b"ok"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    got = list(ShardReader(str(path)))
    assert [(s.key, s.reason) for s in got] == [
        ("000000000000", "missing_image"),
        ("000000000001", "empty_image"),
        ("000000000002", None),
    ]
    assert got[2].pixels.shape == (40, 50, 3)  # upper-case suffix is still the image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_exotic_modes_decode_to_what_a_viewer_shows():
    gray16 = np.full((40, 40), 65535 // 2, np.uint16)
    out = decode_image(_png(Image.fromarray(gray16)))
    assert out.ok and abs(int(out.pixels[0, 0, 0]) - 128) <= 1  # scaled, not clipped to white
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent
    out = decode_image(_png(Image.fromarray(rgba, "RGBA")))
    assert out.ok and (out.pixels == 255).all()  # transparent shows the white background
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(cmyk, format="JPEG", quality=95)
    px = decode_image(cmyk.getvalue()).pixels
    assert px[..., 0].mean() > 200 and px[..., 1].mean() < 60  # CMYK red → RGB red
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 40)).save(rotated, format="JPEG", exif=exif)
    assert decode_image(rotated.getvalue()).pixels.shape == (60, 40, 3)  # EXIF transpose applied


def test_limits_decide_too_small_and_bomb():
    img = _png(Image.new("RGB", (100, 50)))
    assert decode_image(img, ImageLimits(min_size=51)).reason == "too_small"
    assert decode_image(img, ImageLimits(max_pixels=4999)).reason == "decompression_bomb"
    assert decode_image(img, ImageLimits(min_size=50, max_pixels=5000)).ok


def test_member_names_are_never_paths():
    assert split_member_name("../../etc/passwd.jpg") == ("../../etc/passwd", "jpg")
    assert split_member_name("a/b/000000000001.tar.gz") == ("a/b/000000000001", "tar.gz")


def test_shard_patterns(sample_shards):
    assert expand_shards([str(sample_shards / "{00000000..00000001}.tar")]) == [
        str(sample_shards / "00000000.tar"),
        str(sample_shards / "00000001.tar"),
    ]
    with pytest.raises(ShardError, match=r"data.shards: '.*nothing\*.tar' matches no file"):
        expand_shards([str(sample_shards / "nothing*.tar")])
