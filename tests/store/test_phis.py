"""PHI-S: a rotation and one scale that gives every channel unit variance, fitted from the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from radio.cli.main import app
from radio.store.layout import FeatureStore, StoreError
from radio.store.moments import Moments
from radio.store.normalizers import Normalizer, fit_store, load_phis, normalizer_for, normalizer_info
from radio.store.phis import fit_phis


def _anisotropic(n=20000, c=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(c, c)))
    scales = np.logspace(2, -2, c)  # eigenvalues spanning 8 orders of magnitude
    return (rng.normal(size=(n, c)) * scales) @ q.T + rng.normal(size=c) * 50


def test_phis_gives_unit_channel_variance_without_whitening():
    x = _anisotropic()
    p = fit_phis(Moments.of(x))
    y = p.normalize(x)
    cov = np.cov(y, rowvar=False)
    assert np.abs(y.mean(0)).max() < 1e-9
    assert np.allclose(np.diag(cov), 1.0, atol=1e-9)  # every channel: variance 1
    # Not whitening: the spectrum keeps its shape, scaled by 1/φ² (a rotation and one scale).
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    assert np.allclose(ev, p.eigenvalues / p.phi**2, rtol=1e-8)
    assert ev[0] / ev[-1] > 1e6
    assert np.allclose(p.denormalize(y), x, atol=1e-9)


def test_without_the_hadamard_channels_stay_as_unequal_as_the_eigenvalues():
    x = _anisotropic()
    p = fit_phis(Moments.of(x))
    # (1/φ) Uᵀ alone, i.e. PHI-S with H dropped: since transform = (1/φ) H Uᵀ and H is orthogonal,
    # (1/φ) Uᵀ = Hᵀ · transform. Channel variances are then the eigenvalues / φ².
    from radio.store.hadamard import normalized_hadamard

    pca = (x - p.mean) @ (normalized_hadamard(len(p.mean)).T @ p.transform).T
    var = pca.var(0, ddof=1)
    assert var.max() / var.min() > 1e6
    assert np.allclose(np.sort(var)[::-1], p.eigenvalues / p.phi**2, rtol=1e-6)


def test_normalizer_on_any_device_and_dtype_round_trips():
    x = _anisotropic(n=4000, c=48)
    p = fit_phis(Moments.of(x))
    for mode in ("phis", "standardize", "none"):
        norm = Normalizer.from_phis(mode, p)
        t = torch.tensor(x[:100], dtype=torch.float32).reshape(10, 10, 48)
        y = norm.normalize(t)
        assert y.dtype == torch.float32 and y.shape == t.shape
        assert torch.allclose(norm.denormalize(y), t, rtol=1e-4, atol=1e-3)
        assert norm.normalize(t.double()).dtype == torch.float64
        assert norm.normalize(t.bfloat16()).dtype == torch.bfloat16
    std = Normalizer.from_phis("standardize", p).normalize(torch.tensor(x)).numpy()
    assert np.allclose(std.var(0, ddof=1), 1.0, atol=1e-9)


def test_one_normalizer_per_teacher_whitens_the_union_of_its_keys(tiny_store):
    config, path = tiny_store
    store = FeatureStore(path)
    reports = fit_store(store, ["dinov2@112", "sam@128"])  # keys choose teachers; each fit takes all its keys
    assert {(r.teacher, r.keys, r.stream) for r in reports} == {
        ("dinov2", ("dinov2@112", "dinov2@168"), "features"),
        ("dinov2", ("dinov2@112", "dinov2@168"), "summary"),
        ("sam", ("sam@128", "sam@192", "sam@256", "sam@64"), "features"),
    }
    manifest = store.manifest().to_pylist()
    rows = [r["row"] for r in manifest if r["valid"]]
    for teacher in ("dinov2", "sam"):
        report = next(r for r in reports if r.teacher == teacher and r.stream == "features")
        per_key = [store.array(k, "features").get_orthogonal_selection((rows,)).astype(np.float64) for k in report.keys]
        x = np.concatenate([f.reshape(-1, f.shape[-1]) for f in per_key])
        assert report.count == len(x)  # the moments cover exactly the valid rows' tokens of every key
        assert [s.count for s in report.spectra] == [f.shape[0] * f.shape[1] * f.shape[2] for f in per_key]
        p = load_phis(store, report.keys[-1])  # any key of a teacher: the teacher's normalizer
        assert np.array_equal(p.transform, load_phis(store, report.keys[0]).transform)
        y = Normalizer.from_phis("phis", p).normalize(torch.from_numpy(x)).numpy()
        assert np.abs(y.mean(0)).max() < 1e-6
        assert np.allclose(y.var(0, ddof=1), 1.0, atol=1e-6)
    info = normalizer_info(store, "sam")
    assert info["keys"] == ["sam@128", "sam@192", "sam@256", "sam@64"]
    assert info["tars"] == {k: [0, 1, 2] for k in info["keys"]}
    assert normalizer_for(store, key="sam@192").matrix.equal(normalizer_for(store, teacher="sam").matrix)


def test_fit_phis_is_idempotent_and_refuses_incomplete_keys(tiny_store, tmp_path):
    import shutil

    config, path = tiny_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "normalizers" / "clip", ignore_errors=True)  # other tests may have fitted it
    runner = CliRunner()
    base = ["fit-phis", "--store", str(copy), "--keys", "clip@112", "--plot", str(tmp_path / "s.png")]
    first = runner.invoke(app, base)
    assert first.exit_code == 0, first.output
    assert "PHI-S: 2 fitted, 0 unchanged" in first.stdout  # clip's features and summary, from clip@112 and @168
    assert (tmp_path / "s.png").stat().st_size > 10_000
    before = load_phis(FeatureStore(copy), "clip@112").transform.copy()
    second = runner.invoke(app, base)
    assert second.exit_code == 0 and "PHI-S: 0 fitted, 2 unchanged" in second.stdout
    assert np.array_equal(before, load_phis(FeatureStore(copy), "clip@112").transform)
    # Undo one tar's completion marker: the key is now incomplete.
    store = FeatureStore(copy)
    store.array("clip@112", "complete")[1] = 0
    third = runner.invoke(app, base)
    assert third.exit_code == 2
    assert third.stderr.strip() == (
        "error: clip@112: featurize is incomplete (2 of 3 tars); finish `radio featurize` or pass --allow-partial"
    )
    assert runner.invoke(app, [*base, "--allow-partial"]).exit_code == 0
    with pytest.raises(StoreError, match=r"no target key 'nope' \(the store has: clip@112, clip@168"):
        fit_store(store, ["nope"])


def test_max_tars_fits_from_an_evenly_spaced_sample(tiny_store):
    _, path = tiny_store
    store = FeatureStore(path)
    all_tars = store.moments("clip@112")
    two = store.moments("clip@112", max_tars=2)
    assert len(all_tars) == 3 and len(two) == 2
    assert two[0].count == all_tars[0].count and two[1].count == all_tars[2].count  # first and last
