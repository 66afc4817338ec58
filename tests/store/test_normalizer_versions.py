"""Normalizers are immutable and addressed by fingerprint, so compact data is never orphaned (issue 21 C):
a refit adds a normalizer beside the one compact targets are encoded in, readers re-express them in the
current one, `store compact --overwrite` recompacts from them; featurize --overwrite writes raw when the
teacher output changed; attributes are one write each; `store compact` checks every key first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from radio.cli.main import app
from radio.store import compact as c
from radio.store.codec import decode
from radio.store.inspect import store_info, verify_store
from radio.store.layout import FeatureStore
from radio.store.normalizers import (
    current_fingerprint,
    fit_store,
    load_teacher_phis,
    normalizer_info,
    normalizer_versions,
    teacher_of,
)

pytestmark = pytest.mark.slow
KEY = "dinov2@112"
STEP = 4.0 / 127  # the int8 step at the default clip of 4σ
STREAMS = {
    "clip": ["features", "summary"],
    "dinov2": ["features", "summary"],
    "sam": ["features"],
    "siglip": ["features", "summary"],
}


class Killed(Exception):
    """A process killed at one write (fault injection)."""


def kill_at(monkeypatch, n: int, match) -> list[str]:
    """Fault: the ``n``-th write to the local Zarr store whose key ``match``es raises :class:`Killed`
    (``n = 0``: none does); returns the matching keys written, in order."""
    seen: list[str] = []
    real = zarr.storage.LocalStore.set

    async def faulty(self, key, value, *args, **kwargs):
        if match(key):
            seen.append(key)
            if len(seen) == n:
                raise Killed(key)
        return await real(self, key, value, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", faulty)
    return seen


def _copy(path, dest: Path) -> FeatureStore:
    shutil.copytree(path, dest / "store.zarr")
    return FeatureStore(dest / "store.zarr")


def _tiny_config(repo, root: Path):
    from radio.config import load_pipeline
    from radio.shards.sampledata import write_sample_data

    write_sample_data(root / "shards", images=40, shard_size=16, seed=11, corrupt=2)  # the tiny store's shards
    return load_pipeline(
        repo / "pipelines.yaml",
        "tiny",
        data=str(root / "shards" / "*.tar"),
        store=str(root / "store.zarr"),
        out=str(root / "run"),
    )


def _featurize(store, items, config) -> None:
    from radio.featurize.graph import run_local
    from radio.featurize.job import _settings

    assert all(r.error is None for r in run_local(store, items, _settings(config), config.featurize.batch_size))


@pytest.fixture(scope="module")
def readme_flow(repo, tmp_path_factory):
    """The README's flow on the tiny shards: featurize tar 0, fit-phis on it (``--allow-partial``),
    featurize the rest (written int8 directly), `store compact --drop-raw`: every tar of every key is
    stored only compact, in the first normalizers. (config, store path, {teacher: first fingerprint})."""
    from radio.featurize.job import prepare, select

    root = tmp_path_factory.mktemp("flow")
    config = _tiny_config(repo, root)
    selection = select(config)
    store, items = prepare(config, selection)
    _featurize(store, [i for i in items if i.tar_index == 0], config)
    fit_store(store, allow_partial=True)
    store, items = prepare(config, selection)
    assert {i.tar_index for i in items} == {1, 2}
    _featurize(store, items, config)
    r = CliRunner().invoke(app, ["store", "compact", str(store.path), "--drop-raw"])
    assert r.exit_code == 0, r.output
    first = {t: current_fingerprint(store, t) for t in STREAMS}
    return config, root / "store.zarr", first


def _valid_rows(ref: FeatureStore, key: str) -> np.ndarray:
    raw = ref.array(key, "features")[:]
    return np.flatnonzero(np.abs(raw).reshape(len(raw), -1).max(1) > 0)


def test_refit_adds_a_normalizer_and_compact_only_data_still_decodes_in_the_new_space_and_trains(
    readme_flow, tiny_store, tmp_path
):
    from radio.distill.trainer import train_stage
    from radio.store.compact_decode import CompactDecoder

    config, path, first = readme_flow
    store = _copy(path, tmp_path)
    assert all(c.raw_missing(store, k)[store.completed(k)].all() for k in store.target_keys)  # only compact on disk
    reports = fit_store(store)  # a plain `radio fit-phis`: now from every tar's moments
    assert not any(r.unchanged for r in reports)
    for teacher, streams in STREAMS.items():
        new = current_fingerprint(store, teacher)
        assert normalizer_versions(store, teacher) == sorted([first[teacher], new]) and new != first[teacher]
        assert all(len(normalizer_versions(store, teacher, s)) == 2 for s in streams)
        fitted_from = normalizer_info(store, teacher, fingerprint=first[teacher])["tars"]
        assert set(fitted_from[teacher_keys_of(store, teacher)[0]]) == {0}  # the first one: tar 0 only
    ref = FeatureStore(tiny_store[1])  # the same shards featurized all raw
    for key in ("dinov2@112", "sam@128", "clip@168"):
        teacher = teacher_of(store, key)
        ck = c.compact_key(store, key)
        assert c.compact_fingerprint(ck) == first[teacher] and not c.is_current(store, ck)
        old, new = c.compact_phis(store, ck), c.current_phis(store, key)
        rows = _valid_rows(ref, key)
        raw = ref.array(key, "features")[rows].astype(np.float64)
        q = torch.from_numpy(store.root["targets"][key]["compact"]["features"][rows])
        got = CompactDecoder(ck, store)({"features": q})["features"].double()
        a, b = (torch.from_numpy(v) for v in c.reexpression(old, new))
        # The affine re-expression of the decoded values: y_new = T_new (T_old⁻¹ y_old + μ_old − μ_new).
        assert torch.allclose(got, decode(ck.features, q).double() @ a + b, atol=1e-4)
        # Exact up to the int8 step: back in the space it was encoded in, within half a step of the truth
        # (values beyond the clip of 4σ, which a normalizer fitted on one tar sees in the others, are clipped) ...
        back, truth = ((got - b) @ torch.linalg.inv(a)).numpy(), old.normalize(raw)
        clipped = np.abs(q.numpy()) == 127
        assert np.abs(back - truth)[~clipped].max() <= STEP / 2 + 1e-3
        assert (np.abs(truth[clipped]) >= 4 - STEP / 2).all() and (
            np.sign(truth[clipped]) == np.sign(back[clipped])
        ).all()
        # ... so in the new space within that half step mapped by A (vectors with no clipped value).
        whole = ~clipped.any(-1)
        assert np.abs(got.numpy() - new.normalize(raw))[whole].max() <= STEP / 2 * float(a.abs().sum(0).max()) + 1e-3
    info = {k.key: k for k in store_info(store.path)["keys"]}
    assert (info[KEY].normalizer, info[KEY].normalizer_current) == (first["dinov2"], False)
    r = CliRunner().invoke(app, ["store", "info", str(store.path), "--json"])
    assert r.exit_code == 0, r.output
    shown = {k["key"]: (k["normalizer"], k["normalizer_current"]) for k in json.loads(r.output)["keys"]}
    assert shown["sam@128"] == (first["sam"], False)
    assert verify_store(store.path) == []
    cfg = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(store.path)}), "out": str(tmp_path / "run")}
    )
    result = train_stage(cfg, 1, steps=2)
    assert len(result.losses) == 2 and np.isfinite(result.losses).all()


def teacher_keys_of(store: FeatureStore, teacher: str) -> list[str]:
    return [k for k in store.target_keys if teacher_of(store, k) == teacher]


def test_compact_overwrite_after_refit_recompacts_from_the_compact_values(readme_flow, tiny_store, tmp_path):
    _, path, first = readme_flow
    store = _copy(path, tmp_path)
    fit_store(store)
    # The same request without --overwrite resumes in the normalizer the key was compacted in: nothing to do.
    assert c.compact_store_key(store, KEY) == 0
    assert c.compact_fingerprint(c.compact_key(store, KEY)) == first["dinov2"]
    r = CliRunner().invoke(app, ["store", "compact", str(store.path), "-k", KEY, "--overwrite", "--drop-raw"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].startswith(
        f"{KEY}: int8 clip 4σ, 3 tars compacted, 3/3 done, variance retained 0.9"
    )
    store = FeatureStore(store.path)
    ck = c.compact_key(store, KEY)
    assert (
        c.is_current(store, ck) and c.compact_fingerprint(ck) == current_fingerprint(store, "dinov2") != first["dinov2"]
    )
    assert c.raw_missing(store, KEY).all() and verify_store(store.path) == []
    old = load_teacher_phis(store, "dinov2", fingerprint=first["dinov2"])
    a, _ = c.reexpression(old, c.current_phis(store, KEY))
    ref = FeatureStore(tiny_store[1])
    rows = _valid_rows(ref, KEY)
    raw = ref.array(KEY, "features")[rows].astype(np.float64)
    got = decode(ck.features, torch.from_numpy(store.root["targets"][KEY]["compact"]["features"][rows])).numpy()
    # Two int8 roundings (the old space's, mapped by A, and the new one's) plus fp16 of the restored raw,
    # on vectors the old normalizer (fitted on one tar) did not clip.
    bound = STEP / 2 * (1 + float(np.abs(a).sum(0).max())) + 1e-2
    whole = (np.abs(old.normalize(raw)) < 4 - STEP).all(-1)
    assert whole.mean() > 0.5
    assert np.abs(got - c.current_phis(store, KEY).normalize(raw))[whole].max() <= bound


def _write_unversioned(store: FeatureStore, teacher: str, stream: str, p, attrs: dict) -> None:
    """A normalizer as the code before versioning wrote it: arrays and attributes on normalizers/TEACHER/STREAM."""
    g = store.root.require_group("normalizers").require_group(teacher).require_group(stream)
    for name in ("mean", "transform", "inverse", "eigenvalues", "std"):
        value = getattr(p, name)
        g.create_array(name, shape=value.shape, dtype="float64", chunks=value.shape, overwrite=True, fill_value=0)[
            ...
        ] = value
    g.update_attributes({k: v for k, v in attrs.items() if k != "provenance"})


def test_a_store_in_the_unversioned_layout_opens_compacts_and_refits_beside_it(tiny_store, tmp_path):
    from radio.store.compact_decode import CompactDecoder

    store = _copy(tiny_store[1], tmp_path)
    fit_store(store, [KEY], max_tars=2)
    saved = {s: (load_teacher_phis(store, "dinov2", s), normalizer_info(store, "dinov2", s)) for s in STREAMS["dinov2"]}
    shutil.rmtree(Path(store.path) / "normalizers" / "dinov2")
    store = FeatureStore(store.path)
    for stream, (p, attrs) in saved.items():
        _write_unversioned(store, "dinov2", stream, p, attrs)
    fp = saved["features"][1]["fingerprint"]
    store = FeatureStore(store.path)
    assert current_fingerprint(store, "dinov2") == fp and normalizer_versions(store, "dinov2") == [fp]
    assert np.array_equal(c.current_phis(store, KEY).transform, saved["features"][0].transform)
    assert c.compact_store_key(store, KEY) == 3  # an old fit recorded no provenance: compacting it is allowed
    reports = fit_store(store, [KEY])  # every tar: a new normalizer beside the unversioned one
    new = current_fingerprint(store, "dinov2")
    assert not reports[0].unchanged and sorted(normalizer_versions(store, "dinov2")) == sorted([fp, new])
    ck = c.compact_key(store, KEY)
    assert c.compact_fingerprint(ck) == fp and not c.is_current(store, ck)
    assert np.array_equal(c.compact_phis(store, ck).transform, saved["features"][0].transform)
    dec = CompactDecoder(ck, store)
    assert dec.features_reexpress is not None
    # Refitting from the first moments again makes the unversioned one current again (nothing rewritten).
    reports = fit_store(store, [KEY], max_tars=2)
    assert not reports[0].unchanged and current_fingerprint(store, "dinov2") == fp and c.is_current(store, ck)
    assert CompactDecoder(ck, store).features_reexpress is None
    assert verify_store(store.path) == []


def test_featurize_overwrite_with_another_teacher_output_writes_raw_not_int8_in_a_stale_normalizer(repo, tmp_path):
    from radio.featurize.job import prepare, select

    config = _tiny_config(repo, tmp_path)
    selection = select(config, ["dinov2"])
    store, items = prepare(config, selection)
    _featurize(store, [i for i in items if i.tar_index == 0], config)
    fit_store(store, [KEY], allow_partial=True)
    # The same teacher output: --overwrite still writes int8 directly in the normalizer fitted on it.
    store, items = prepare(config, selection, overwrite=True)
    assert c.compact_key(store, KEY) is not None
    teachers = dict(config.teachers)
    teachers["dinov2"] = teachers["dinov2"].model_copy(update={"output_scale": 2.0})
    changed = config.model_copy(update={"teachers": teachers})
    notes: list[str] = []
    store, items = prepare(changed, select(changed, ["dinov2"]), overwrite=True, notes=notes)
    assert c.compact_key(store, KEY) is None  # the normalizer was fitted on other outputs: raw fp16
    assert notes[0] == (
        f"{KEY}: its PHI-S was fitted on other teacher outputs; written raw fp16 "
        "(run `radio fit-phis` again, then `radio store compact`)"
    )
    _featurize(store, items, changed)
    assert not c.raw_missing(store, KEY).any() and store.completed(KEY).all()
    info = {k.key: k for k in store_info(store.path)["keys"]}[KEY]
    assert (info.codec, info.normalizer, info.variance_retained) == (None, "raw", None)
    assert verify_store(store.path) == []
    r = CliRunner().invoke(app, ["store", "compact", str(store.path), "-k", KEY])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: {KEY}: its PHI-S was fitted on other teacher outputs (featurized again since); "
        "run `radio fit-phis` before compacting"
    ]
    fit_store(store, [KEY])
    assert c.compact_store_key(store, KEY) == 3 and c.variance_retained(store, KEY) >= 0.999


@pytest.fixture(scope="module")
def fitted(tiny_store, tmp_path_factory):
    copy = tmp_path_factory.mktemp("fitted") / "store.zarr"
    shutil.copytree(tiny_store[1], copy)
    fit_store(FeatureStore(copy))
    return copy


def test_compact_attributes_are_one_write_and_a_kill_at_any_of_them_resumes(fitted, tmp_path, monkeypatch):
    def ours(key: str) -> bool:
        return key in (f"targets/{KEY}/compact/zarr.json", f"targets/{KEY}/zarr.json")

    store = _copy(fitted, tmp_path / "clean")
    seen = kill_at(monkeypatch, 0, ours)
    c.prepare_compact(store, KEY, rank=16)
    # The group, its attributes in one write, the key's provenance entry in one write.
    assert seen == [f"targets/{KEY}/compact/zarr.json"] * 2 + [f"targets/{KEY}/zarr.json"]
    monkeypatch.undo()
    c.compact_store_key(store, KEY, rank=16)
    want = store.root["targets"][KEY]["compact"]["features"][...]
    for n in range(1, len(seen) + 1):
        s = _copy(fitted, tmp_path / str(n))
        kill_at(monkeypatch, n, ours)
        with pytest.raises(Killed):
            c.prepare_compact(s, KEY, rank=16)
        monkeypatch.undo()
        s = FeatureStore(s.path)
        info = {k.key: k for k in store_info(s.path)["keys"]}[KEY]  # never a KeyError on a half-written codec
        assert info.codec in (None, "int8")
        assert c.compact_store_key(s, KEY, rank=16) == 3, n  # the resume, not "compacted with other settings"
        assert s.target(KEY).attrs["compact"]["rank"] == 16 and verify_store(s.path) == []
        assert np.array_equal(s.root["targets"][KEY]["compact"]["features"][...], want)


def test_fit_phis_killed_at_any_write_refits_to_a_complete_normalizer(fitted, tmp_path, monkeypatch):
    store = _copy(fitted, tmp_path)
    clean = {s: normalizer_info(store, "dinov2", s) for s in STREAMS["dinov2"]}
    transform = load_teacher_phis(store, "dinov2").transform

    def under(key: str) -> bool:
        return key.startswith("normalizers/dinov2/")

    def refit_after_kill(n: int) -> None:
        shutil.rmtree(Path(store.path) / "normalizers" / "dinov2")
        kill_at(monkeypatch, n, under)
        with pytest.raises(Killed):
            fit_store(FeatureStore(store.path), [KEY])
        monkeypatch.undo()
        fit_store(FeatureStore(store.path), [KEY])

    shutil.rmtree(Path(store.path) / "normalizers" / "dinov2")
    seen = kill_at(monkeypatch, 0, under)
    fit_store(FeatureStore(store.path), [KEY])
    monkeypatch.undo()
    assert seen[-1] == "normalizers/dinov2/summary/zarr.json"  # the pointer to the complete normalizer: last
    for n in range(1, len(seen) + 1):
        refit_after_kill(n)
        s = FeatureStore(store.path)
        for stream, attrs in clean.items():
            assert normalizer_info(s, "dinov2", stream) == attrs, (n, stream)  # hadamard and all, never half
        assert np.array_equal(load_teacher_phis(s, "dinov2").transform, transform)


def test_compact_summary_checks_every_key_before_any_work(fitted, tmp_path):
    store = _copy(fitted, tmp_path)
    r = CliRunner().invoke(app, ["store", "compact", str(store.path), "--summary"])
    assert r.exit_code == 2
    no_summary = next(k for k in store.target_keys if not store.target(k).summary_dim)
    assert r.output.strip().splitlines() == [f"error: {no_summary}: has no summary to compact"]
    assert not list(Path(store.path).glob("targets/*/compact"))  # nothing written
    assert all("compact" not in FeatureStore(store.path).target(k).attrs for k in store.target_keys)


def test_featurize_after_a_refit_writes_new_tars_in_the_normalizer_their_key_is_compacted_in(
    repo, tiny_store, tmp_path
):
    from radio.featurize.job import prepare, select
    from radio.store.compact_decode import CompactDecoder, compact_keys

    config = _tiny_config(repo, tmp_path)
    selection = select(config, ["dinov2"])
    store, items = prepare(config, selection)
    _featurize(store, [i for i in items if i.tar_index == 0], config)
    fit_store(store, [KEY], allow_partial=True)
    first = current_fingerprint(store, "dinov2")
    store, items = prepare(config, selection)
    _featurize(store, [i for i in items if i.tar_index == 1], config)  # written int8 in the first normalizer
    fit_store(store, [KEY], allow_partial=True)  # a refit from tars 0 and 1 while featurize is not done
    assert current_fingerprint(store, "dinov2") != first
    store, items = prepare(config, selection)  # was refused ("since replaced"); now resumes in the group's normalizer
    _featurize(store, items, config)
    ck = c.compact_key(store, KEY)
    assert c.compact_fingerprint(ck) == first and c.raw_missing(store, KEY).tolist() == [False, True, True]
    assert c.compact_store_key(store, KEY) == 1 and list(compact_keys(store, [KEY])) == [KEY]
    assert verify_store(store.path) == []
    ref = FeatureStore(tiny_store[1])
    t = store.plan.tars[2]
    rows = np.intersect1d(_valid_rows(ref, KEY), np.arange(t.row_start, t.row_start + t.rows))
    raw = ref.array(KEY, "features")[rows].astype(np.float64)
    q = store.root["targets"][KEY]["compact"]["features"][rows]
    old = c.compact_phis(store, ck)
    clipped = np.abs(q) == 127
    assert (
        np.abs(decode(ck.features, torch.from_numpy(q)).numpy() - old.normalize(raw))[~clipped].max() <= STEP / 2 + 1e-4
    )
    got = CompactDecoder(ck, store)({"features": torch.from_numpy(q)})["features"].double().numpy()
    a, _ = c.reexpression(old, c.current_phis(store, KEY))
    whole = ~clipped.any(-1)
    assert (
        np.abs(got - c.current_phis(store, KEY).normalize(raw))[whole].max() <= STEP / 2 * np.abs(a).sum(0).max() + 1e-3
    )
