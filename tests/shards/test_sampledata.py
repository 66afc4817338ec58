"""`radio sample-data` writes DataComp/img2dataset layout that round-trips."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile

import pyarrow.parquet as pq
from typer.testing import CliRunner

from radio.cli.main import app
from radio.shards.sampledata import write_sample_data
from radio.shards.tar import ShardReader, split_member_name


def test_layout_and_counts(sample_shards):
    tars = sorted(sample_shards.glob("*.tar"))
    assert [t.name for t in tars] == [f"{i:08d}.tar" for i in range(len(tars))]
    all_keys: list[str] = []
    for tar in tars:
        shard = tar.stem
        table = pq.read_table(sample_shards / f"{shard}.parquet").to_pylist()
        stats = json.loads((sample_shards / f"{shard}_stats.json").read_text())
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            keys_in_tar = list(dict.fromkeys(split_member_name(n)[0] for n in names))
            metas = {split_member_name(n)[0]: json.load(tf.extractfile(n)) for n in names if n.endswith(".json")}
        successes = [r for r in table if r["status"] == "success"]
        # Counts in the tar = successes in the parquet; failures are listed but absent from the tar.
        assert len(keys_in_tar) == len(successes) == stats["successes"]
        assert stats["count"] == len(table)
        assert {r["key"] for r in successes} == set(keys_in_tar)
        failed = [r for r in table if r["status"] == "failed_to_download"]
        assert stats["failed_to_download"] == len(failed)
        assert all(r["key"] not in keys_in_tar and r["error_message"] for r in failed)
        for key, meta in metas.items():
            assert re.fullmatch(r"\d{12}", key) and key.startswith(shard)
            assert meta["key"] == key
            assert re.fullmatch(r"[0-9a-f]{32}", meta["uid"])
            assert isinstance(meta["caption"], str) and meta["caption"]
            for field in ("width", "height", "original_width", "original_height"):
                assert isinstance(meta[field], int) and meta[field] > 0
            assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
            assert meta["status"] == "success"
        all_keys += [r["key"] for r in table]
    assert len(all_keys) == len(set(all_keys)), "keys must be unique"
    assert sum(1 for _ in sample_shards.glob("*_stats.json")) == len(tars)


def test_images_are_distinct_real_photos_of_varied_shapes(sample_shards):
    digests, shapes = set(), set()
    for tar in sorted(sample_shards.glob("*.tar")):
        for s in ShardReader(str(tar)):
            if s.valid:
                digests.add(hashlib.sha256(s.pixels.tobytes()).hexdigest())
                shapes.add(s.pixels.shape[:2])
                assert s.pixels.std() > 5  # a photo, not a flat fill
    assert len(digests) >= 30  # 24 photos + 7 exotic, all different
    assert len({round(w / h, 1) for h, w in shapes}) >= 5  # varied aspect ratios


def test_same_seed_same_bytes(tmp_path):
    a = write_sample_data(tmp_path / "a", images=6, shard_size=4, seed=7)
    b = write_sample_data(tmp_path / "b", images=6, shard_size=4, seed=7)
    assert a.shards == b.shards == 2
    for name in ("00000000.tar", "00000001.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cli_writes_and_reports(tmp_path):
    result = CliRunner().invoke(
        app, ["sample-data", "--out", str(tmp_path), "--images", "5", "--shard-size", "3", "--corrupt", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 shards" in result.stdout
    assert "2 corrupt" in result.stdout
    result = CliRunner().invoke(app, ["sample-data", "--out", str(tmp_path), "--shard-size", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --shard-size must be in 1..10000 (DataComp keys hold 4 digits of index)"
