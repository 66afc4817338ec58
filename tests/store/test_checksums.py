"""Checksums on every byte of the tiny store (issue 21): one flipped byte in features, summary,
compact int8, moments, a normalizer or a manifest page is an error for the reader that would
train on it and a (tar, key) line in `radio store verify`; an absent shard of a complete tar is
an error, never zeros; damaged metadata is one line; stores written before checksums still read."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import load_pipeline
from radio.store import compact as c
from radio.store.checksums import CorruptError, MissingDataError, has_checksums
from radio.store.inspect import repair_commands, verify_report
from radio.store.layout import FeatureStore
from radio.store.manifest import Manifest
from radio.store.normalizers import current_fingerprint, fit_store, load_phis
from radio.store.shardread import ShardRuns
from radio.store.targets import TargetReader

pytestmark = pytest.mark.slow
KEY = "dinov2@112"  # compacted below (features and summary), raw kept
RAW = "clip@112"  # raw only
TAR = 1


@pytest.fixture(scope="module")
def fitted(tiny_store, tmp_path_factory):
    """A copy of the tiny store with PHI-S fitted and KEY compacted (int8, summary too)."""
    config, path = tiny_store
    copy = tmp_path_factory.mktemp("checksums") / "store.zarr"
    shutil.copytree(path, copy)
    store = FeatureStore(copy)
    fit_store(store)
    c.compact_store_key(store, KEY, summary=True)
    return config, copy


@pytest.fixture
def store(fitted, tmp_path) -> FeatureStore:
    shutil.copytree(fitted[1], tmp_path / "store.zarr")
    return FeatureStore(tmp_path / "store.zarr")


def _row(store: FeatureStore, tar: int = TAR) -> int:
    """The first valid row of ``tar``."""
    m = store.manifest().to_pydict()
    return next(r for r, t, v in zip(m["row"], m["tar_index"], m["valid"]) if t == tar and v)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04  # one bit: a mantissa bit of fp16, a value bit of int8
    path.write_bytes(bytes(data))


def _shard_chunk(array: Path, row: int, shard_rows: int) -> tuple[Path, int]:
    """A sharded array's shard file holding ``row`` and the offset of that row's inner chunk."""
    f = next((array / "c" / str(row // shard_rows)).rglob("*"))
    while f.is_dir():
        f = next(f.iterdir())
    n = shard_rows * 16
    idx = np.frombuffer(f.read_bytes()[-n - 4 : -4], "<u8").reshape(shard_rows, 2)
    return f, int(idx[row % shard_rows, 0])


def _chunk_file(array: Path, first: int) -> Path:
    f = array / "c" / str(first)
    while f.is_dir():
        f = next(f.iterdir())
    return f


def _damage(store: FeatureStore, kind: str) -> int:
    """Flip one byte of ``kind``'s data for TAR's first valid row; returns the row."""
    root, r = Path(store.path), store.plan.shard_rows
    row = _row(store)
    if kind == "features":
        f, off = _shard_chunk(root / "targets" / RAW / "features", row, r)
        _flip(f, off + 7)
    elif kind == "summary":
        _flip(
            _chunk_file(root / "targets" / RAW / "summary", row // r), 7 + (row % r) * 2 * store.target(RAW).summary_dim
        )
    elif kind == "compact":
        f, off = _shard_chunk(root / "targets" / KEY / "compact" / "features", row, r)
        _flip(f, off + 5)
    elif kind == "moments":
        _flip(_chunk_file(root / "targets" / RAW / "moments" / "features_mean", TAR), 11)
    elif kind == "normalizer":
        fp = current_fingerprint(store, "dinov2")  # normalizers are versioned by fingerprint
        _flip(_chunk_file(root / "normalizers" / "dinov2" / "features" / fp / "transform", 0), 101)
    elif kind == "manifest":
        name = root / store.manifest_name(TAR)
        meta = pq.ParquetFile(name).metadata.row_group(0)
        col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "crop_x")
        end = (col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size
        _flip(name, end - 2)  # inside crop_x's last data page
    return row


def _train_read(store: FeatureStore, kind: str, row: int):
    """What the trainer (or fit-phis, compact, export) would read of the damaged data."""
    if kind in ("features", "summary"):
        return TargetReader(store.path, [(RAW, True)]).read(np.array([row]))
    if kind == "compact":
        return TargetReader(store.path, [(KEY, False)], compact=frozenset({KEY})).read(np.array([row]))
    if kind == "moments":
        return FeatureStore(store.path).moments(RAW)
    if kind == "normalizer":
        return load_phis(FeatureStore(store.path), KEY)
    return Manifest.build(FeatureStore(store.path))


READ_ERRORS = {
    "features": lambda s, row: (
        rf"^{RAW}: features of tar {TAR} \(00000001.tar\), row {row}, shard "
        rf"{s.path}/targets/{RAW}/features/c/{row // 8}/0/0/0 is damaged \(row {row} does not match its crc32c\); "
        rf"run `radio store verify {s.path}`$"
    ),
    "summary": lambda s, row: (
        rf"^{RAW}: summary of tar {TAR} \(00000001.tar\), row {row - row % 8}, shard "
        rf"{s.path}/targets/{RAW}/summary/c/{row // 8}/0 is damaged \(DATA_LOSS: .*Digest mismatch.*\); "
        rf"run `radio store verify {s.path}`$"
    ),
    "compact": lambda s, row: (
        rf"^{KEY}: features of tar {TAR} \(00000001.tar\), row {row}, shard "
        rf"{s.path}/targets/{KEY}/compact/features/c/{row // 8}/0/0/0 is damaged \(row {row} does not match its crc32c"
    ),
    "moments": lambda s, row: (
        rf"^{s.path}: {RAW} tar {TAR}: targets/{RAW}/moments/features_mean: stored bytes are "
        r"damaged \(Stored and computed checksum do not match\..*\)$"
    ),
    "normalizer": lambda s, row: (
        rf"^{s.path}: normalizers/dinov2/features/[0-9a-f]{{16}}/transform: stored bytes are damaged "
        r"\(Stored and computed checksum do not match\..*\)$"
    ),
    "manifest": lambda s, row: (
        rf"^{s.path}/manifest/0000000{TAR}.parquet: damaged parquet \(could not verify page "
        r"integrity, CRC checksum verification failed .*\)$"
    ),
}
VERIFY_PROBLEMS = {  # (key, the problem line's regex)
    "features": (RAW, rf"^{RAW} tar {TAR} \(00000001.tar\): features: stored bytes are damaged \(Stored and computed"),
    "summary": (RAW, rf"^{RAW} tar {TAR} \(00000001.tar\): summary: stored bytes are damaged \(Stored and computed"),
    "compact": (KEY, rf"^{KEY} compact tar {TAR} \(00000001.tar\): compact/features: stored bytes are damaged"),
    "moments": (RAW, rf"^{RAW} tar {TAR} \(00000001.tar\): moments/features_mean: stored bytes are damaged"),
    "normalizer": (
        None,
        r"^normalizers/dinov2/features/[0-9a-f]{16}/transform: stored bytes are damaged \(.*\); run `radio fit-phis`",
    ),
    "manifest": (RAW, rf"^{RAW} tar {TAR} \(00000001.tar\): .*manifest/00000001.parquet: damaged parquet \(could not"),
}


@pytest.mark.parametrize("kind", list(READ_ERRORS))
def test_one_flipped_byte_stops_the_reader_and_verify_lists_the_tar_and_key(store, kind):
    row = _damage(store, kind)
    with pytest.raises(CorruptError) as e:
        _train_read(store, kind, row)
    assert "\n" not in str(e.value)
    assert e.match(READ_ERRORS[kind](store, row)), str(e.value)
    report = verify_report(store.path)
    key, line = VERIFY_PROBLEMS[kind]
    hits = [p for p in report.problems if re.search(line, p)]
    assert hits, report.problems
    if key is not None:
        assert TAR in report.damaged[key]
        assert f"radio store invalidate {store.path} --key {key} --tars " in "\n".join(
            repair_commands(store.path, report)
        )
    if kind == "manifest":  # a tar's manifest serves every key: each (tar, key) complete on it is listed
        assert set(report.damaged) == set(store.target_keys) and all(v == {TAR} for v in report.damaged.values())
    else:
        assert sum(len(v) for v in report.damaged.values()) == (0 if key is None else 1)


def test_a_clean_store_verifies_and_reads_every_row_with_checksums(store):
    assert verify_report(store.path).problems == [] and verify_report(store.path).notes == []
    assert all(has_checksums(store.array(k, "features")) for k in store.target_keys)
    direct = ShardRuns.open(Path(store.path) / "targets" / RAW / "features")
    assert direct is not None and direct.crc and direct.chunk_bytes == direct.row_bytes + 4
    rows = np.arange(store.plan.tars[TAR].row_start, store.plan.tars[TAR].row_start + 8)
    m = store.manifest().to_pydict()
    valid = dict(zip(m["row"], m["valid"]))
    rows = np.array([r for r in rows if valid.get(int(r))])  # only valid rows are ever read
    assert len(rows) >= 4
    got = TargetReader(store.path, [(RAW, True)]).read(rows)[RAW]
    assert np.array_equal(got["features"], store.array(RAW, "features")[rows])
    assert np.array_equal(got["summary"], store.array(RAW, "summary")[rows])
    assert pq.ParquetFile(Path(store.path) / store.manifest_name(TAR)).metadata.num_rows > 0
    # A run of rows is one read; every row of it is checked, not only the first.
    have = set(rows.tolist())
    first = next(r for r in have if r + 1 in have and r + 2 in have and r // 8 == (r + 2) // 8)
    run = np.arange(first, first + 3)
    f, off = _shard_chunk(Path(store.path) / "targets" / RAW / "features", int(run[2]), 8)
    _flip(f, off + 100)
    with pytest.raises(CorruptError, match=rf"is damaged \(row {run[2]} does not match its crc32c\)"):
        TargetReader(store.path, [(RAW, False)]).read(run)


def test_an_absent_shard_of_a_complete_tar_is_an_error_never_the_fill_value(store):
    row = _row(store)
    # What `featurize --overwrite` or `compact --drop-raw` does beside a reader: the summary goes
    # through tensorstore (fill_missing_data_reads: false), the features through the direct reader.
    _chunk_file(Path(store.path) / "targets" / RAW / "summary", row // 8).unlink()
    with pytest.raises(
        MissingDataError,
        match=rf"^{RAW}: summary of tar {TAR} \(00000001.tar\), row {row - row % 8}, "
        rf"shard {store.path}/targets/{RAW}/summary/c/{row // 8}/0 is missing though",
    ):
        TargetReader(store.path, [(RAW, True)]).read(np.array([row]))
    shutil.rmtree(Path(store.path) / "targets" / RAW / "features" / "c" / str(row // 8))
    with pytest.raises(
        MissingDataError,
        match=rf"^{RAW}: features of tar {TAR} \(00000001.tar\), row {row}, shard "
        rf"{store.path}/targets/{RAW}/features/c/{row // 8}/0/0/0 is missing though the store marks the "
        r"tar complete \(removed by a writer: featurize --overwrite or store compact --drop-raw\?\); "
        r"not training on fill values$",
    ):
        TargetReader(store.path, [(RAW, False)]).read(np.array([row]))
    problems = verify_report(store.path).problems
    assert any(
        p.startswith(f"{RAW} tar {TAR} (00000001.tar): ") and "valid rows have all-zero features" in p for p in problems
    )


def test_a_damaged_shard_index_is_one_line_for_the_reader_and_verify(store):
    row = _row(store)
    f, _ = _shard_chunk(Path(store.path) / "targets" / RAW / "features", row, 8)
    _flip(f, f.stat().st_size - 30)  # inside the [8, 2] uint64 index
    with pytest.raises(
        CorruptError,
        match=rf"^{RAW}: features of tar {TAR} \(00000001.tar\), row {row}, shard {f} is "
        r"damaged \(shard index does not match its crc32c\)",
    ):
        TargetReader(store.path, [(RAW, False)]).read(np.array([row]))
    problems = verify_report(store.path).problems
    assert [p for p in problems if p.startswith(f"{RAW} tar {TAR} (00000001.tar): features: stored bytes are damaged")]


def test_a_damaged_compact_scale_array_is_one_line(store):
    _flip(_chunk_file(Path(store.path) / "targets" / KEY / "compact" / "features_scale", 0), 9)
    with pytest.raises(
        CorruptError,
        match=rf"^targets/{KEY}/compact/features_scale: stored bytes are damaged "
        r"\(Stored and computed checksum do not match\..*\)$",
    ):
        c.compact_key(FeatureStore(store.path), KEY)
    report = verify_report(store.path)
    assert [
        p
        for p in report.problems
        if p.startswith(f"{KEY} compact: targets/{KEY}/compact/features_scale: stored bytes are damaged")
        and "store compact --overwrite" in p
    ]


def test_a_damaged_normalizer_is_refitted_by_fit_phis(store):
    before = load_phis(store, KEY).transform
    _damage(store, "normalizer")
    fresh = FeatureStore(store.path)
    fit_store(fresh)  # same moments, so the same fingerprint: rewritten because it does not read
    assert np.array_equal(load_phis(fresh, KEY).transform, before)
    assert verify_report(store.path).problems == []


def test_a_damaged_parquet_footer_is_one_line_and_exit_1(store):
    name = Path(store.path) / store.manifest_name(TAR)
    data = bytearray(name.read_bytes())
    data[-8:-4] = (len(data) * 2).to_bytes(4, "little")  # the footer length points outside the file
    name.write_bytes(bytes(data))
    with pytest.raises(CorruptError, match=rf"^{store.path}/manifest/00000001.parquet: damaged parquet \(.+\)$"):
        Manifest.build(FeatureStore(store.path))
    out = CliRunner().invoke(app, ["store", "info", str(store.path)])
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(
        f"error: {store.path}/manifest/00000001.parquet: damaged parquet ("
    )


def test_verify_cli_lists_damage_and_invalidate_then_featurize_repairs_it(tiny_store, featurize_here, repo, tmp_path):
    config, path = tiny_store
    shutil.copytree(path, tmp_path / "store.zarr")
    # No normalizers, so featurize rewrites the raw targets (with one it writes the tar compact
    # directly); other tests may have fitted PHI-S on the session's tiny store.
    shutil.rmtree(tmp_path / "store.zarr" / "normalizers", ignore_errors=True)
    store = FeatureStore(tmp_path / "store.zarr")
    _damage(store, "features")
    runner = CliRunner()
    out = runner.invoke(app, ["store", "verify", str(store.path)])
    assert out.exit_code == 1
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == f"{store.path}: 1 problems"
    assert lines[-3] == f"repair: radio store invalidate {store.path} --key {RAW} --tars {TAR}"
    assert lines[-2] == "repair: radio featurize (the same config and --store) to redo them"
    out = runner.invoke(app, ["store", "invalidate", str(store.path), "--key", RAW, "--tars", str(TAR)])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == f"{RAW}: 1 tars marked incomplete; run `radio featurize` to redo them"
    assert not FeatureStore(store.path).completed(RAW)[TAR]
    again = load_pipeline(
        repo / "pipelines.yaml",
        "tiny",
        data=",".join(config.data.shards),
        store=str(store.path),
        out=str(Path(store.path).parent / "run"),
    )
    featurize_here(again)
    assert verify_report(store.path).problems == []
    row = _row(store)
    got = TargetReader(store.path, [(RAW, True)]).read(np.array([row]))[RAW]  # reads and checks again
    assert np.array_equal(
        got["features"][0], FeatureStore(path).array(RAW, "features")[row]
    )  # the same bytes as before


def test_invalidate_refuses_a_tar_outside_the_plan(store):
    out = CliRunner().invoke(app, ["store", "invalidate", str(store.path), "--key", RAW, "--tars", "1,99"])
    assert out.exit_code == 2
    assert out.stderr.strip() == f"error: {store.path}: no tar 99 (the plan has tars 0..{len(store.plan.tars) - 1})"


def test_compact_sums_of_zero_for_valid_rows_are_a_problem(store):
    g = store.root["targets"][KEY]["compact"]
    g["sse"][TAR] = 0.0
    g["ssy"][TAR] = 0.0
    problems = verify_report(store.path).problems
    n = sum(
        1
        for r, t, v in zip(*store.manifest().select(["row", "tar_index", "valid"]).to_pydict().values())
        if t == TAR and v
    )
    assert (
        f"{KEY} compact tar {TAR} (00000001.tar): sse and ssy are 0 for {n} valid rows (compact data are zeros)"
        in problems
    )


def _strip_checksums(store: FeatureStore, key: str) -> None:
    """Rewrite ``key``'s arrays as stores before issue 21 wrote them: the same chunks, no crc32c."""
    import zarr

    g = store.root["targets"][key]
    for name in ("features", "summary", "complete"):
        a = g[name]
        data, meta = a[...], json.loads((Path(store.path) / "targets" / key / name / "zarr.json").read_text())
        shards = a.shards
        del g[name]
        g.create_array(
            name,
            shape=a.shape,
            dtype=a.dtype,
            chunks=a.chunks,
            shards=shards,
            compressors=None,
            fill_value=0,
            dimension_names=meta.get("dimension_names"),
        )[...] = data
    assert not zarr.open_array(str(Path(store.path) / "targets" / key / "features")).compressors


def test_a_store_written_before_checksums_reads_and_verify_notes_it(store):
    row = _row(store)
    want = TargetReader(store.path, [(RAW, True)]).read(np.array([row]))[RAW]
    _strip_checksums(store, RAW)
    old = FeatureStore(store.path)
    direct = ShardRuns.open(Path(store.path) / "targets" / RAW / "features")
    assert direct is not None and not direct.crc  # the direct reader keeps the old layout
    got = TargetReader(store.path, [(RAW, True)]).read(np.array([row]))[RAW]
    assert all(np.array_equal(got[n], want[n]) for n in want)
    report = verify_report(old.path)
    assert report.problems == []
    assert report.notes == [
        f"{RAW}: written before data checksums (no crc32c on its chunks); only consistency was checked"
    ]
    out = CliRunner().invoke(app, ["store", "verify", str(store.path)])
    assert out.exit_code == 0 and out.stdout.splitlines() == [f"note: {report.notes[0]}", f"{store.path}: ok"]


def test_a_damaged_row_read_in_a_dataloader_worker_is_one_line_in_the_trainer(store):
    """The trainer's loop reads batches from forkserver DataLoader workers; torch sends a worker's
    error back with its traceback as the message, and `next_batch` makes it one line again."""
    from torch.utils.data import DataLoader

    from radio.distill.data import PartitionRows, StepBatches, collate, next_batch
    from radio.distill.loss import KeyTarget

    row = _damage(store, "features")
    info = store.target(RAW)
    ds = PartitionRows(str(store.path), 32, [KeyTarget(RAW, "clip", info.grid, False, True)])
    sampler = StepBatches(np.array([row]), 1, 0, 0, 0, 1)  # one step of one row: the damaged one
    loader = iter(
        DataLoader(ds, batch_sampler=sampler, num_workers=1, collate_fn=collate, multiprocessing_context="forkserver")
    )
    with pytest.raises(CorruptError) as e:
        next_batch(loader)
    assert str(e.value) == (
        f"{RAW}: features of tar {TAR} (00000001.tar), row {row}, shard {store.path}/targets/{RAW}/"
        f"features/c/{row // 8}/0/0/0 is damaged (row {row} does not match its crc32c); "
        f"run `radio store verify {store.path}`"
    )


def test_a_compressed_store_is_checked_on_the_tensorstore_path(tmp_path):
    """zstd arrays are read through tensorstore (not the direct reader): crc32c follows zstd in the
    chain; a flipped byte of the compressed chunk is a digest mismatch, or zstd's own error where
    tensorstore's streaming decode meets it first: either way one line naming the shard."""
    from radio.store.layout import Plan

    plan = Plan.build([(f"/x/{i:08d}.tar", 0, 8, None) for i in range(2)], 8)
    s = FeatureStore.create(tmp_path / "z.zarr", plan, {})
    s.create_target("k", grid=(2, 2), feature_dim=8, summary_dim=4, provenance={}, compressor="zstd")
    rng = np.random.default_rng(0)
    for start in (0, 8):
        s.write_shard(
            "k",
            start,
            rng.standard_normal((8, 2, 2, 8)).astype(np.float16),
            rng.standard_normal((8, 4)).astype(np.float16),
        )
    assert ShardRuns.open(Path(s.path) / "targets" / "k" / "features") is None  # compressed: tensorstore
    assert [type(c).__name__ for c in s.array("k", "features").compressors] == ["ZstdCodec", "Crc32cCodec"]
    reader = TargetReader(s.path, [("k", True)])
    assert reader.read(np.array([9]))["k"]["features"].shape == (1, 2, 2, 8)
    f, off = _shard_chunk(Path(s.path) / "targets" / "k" / "features", 9, 8)
    _flip(f, off + 3)
    with pytest.raises(
        CorruptError,
        match=rf"^k: features of tar 1 \(00000001.tar\), row 9, shard {f} is damaged "
        r"\((DATA_LOSS: Digest mismatch, .+|FAILED_PRECONDITION: .+)\); "
        rf"run `radio store verify {s.path}`$",
    ):
        TargetReader(s.path, [("k", True)]).read(np.array([9]))


def test_fit_phis_on_damaged_moments_is_one_line_and_exit_1(store, repo):
    _damage(store, "moments")
    out = CliRunner().invoke(
        app, ["fit-phis", "--config", str(repo / "pipelines.yaml"), "--pipeline", "tiny", "--store", str(store.path)]
    )
    assert out.exit_code == 1, out.output
    (line,) = out.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"error: {re.escape(str(store.path))}: {RAW} tar {TAR}: targets/{RAW}/moments/features_mean: "
        r"stored bytes are damaged \(Stored and computed checksum do not match\. Stored: b'.+'\. "
        r"Computed: b'.+'\.\)",
        line,
    ), line
