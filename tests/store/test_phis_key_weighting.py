"""phis_key_weighting (issue 23 §3): how a teacher's keys merge into its one PHI-S normalizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from radio.cli.main import app
from radio.store.layout import FeatureStore, Plan
from radio.store.moments import Moments
from radio.store.normalizers import current_fingerprint, fit_store, merge_keys, normalizer_info

C = 4
LOW, HIGH = "t@32", "t@64"  # one teacher "t"; the high-resolution key has 4× the vectors and 2× the spread


def _store(tmp_path) -> FeatureStore:
    """Two keys whose moments are exact: LOW covariance I over 101 vectors, HIGH 4I over 401, both mean 0."""
    store = FeatureStore.create(tmp_path / "s.zarr", Plan.build([("a.tar", 0, 4, None)], 4), {})
    for key, grid, count, var in ((LOW, (1, 1), 101, 1.0), (HIGH, (2, 2), 401, 4.0)):
        store.create_target(
            key,
            grid=grid,
            feature_dim=C,
            summary_dim=None,
            provenance={"grid": list(grid), "feature_dim": C, "summary_dim": None},
            compressor="none",
        )
        store.write_moments(key, 0, "features", Moments(count, np.zeros(C), np.eye(C) * var * (count - 1)))
        store.mark_complete(key, 0)
    return store


def _variances(reports) -> dict[str, float]:
    (r,) = reports
    return dict(zip(r.keys, r.key_variances))


def test_equal_weighting_brings_the_low_resolution_key_closer_to_unit_variance(tmp_path):
    store = _store(tmp_path)
    count = _variances(fit_store(store, key_weighting="count"))
    equal = _variances(fit_store(store, key_weighting="equal"))
    # count: Σ = (100·I + 400·4I) / 501 = 3.3932 I; equal: Σ = (I + 4I) / 2 = 2.5 I.
    assert count[LOW] == pytest.approx(501 / 1700, rel=1e-12)
    assert count[HIGH] == pytest.approx(4 * 501 / 1700, rel=1e-12)
    assert equal[LOW] == pytest.approx(0.4, rel=1e-12)
    assert equal[HIGH] == pytest.approx(1.6, rel=1e-12)
    assert np.mean(list(equal.values())) == pytest.approx(1.0, rel=1e-12)  # equal weights: the keys average to 1

    def worst(v):
        return max(abs(math.log(x)) for x in v.values())

    assert worst(equal) < worst(count)  # the key farthest from 1 (LOW) is closer: 0.92 against 1.22 in log


def test_equal_weighting_takes_each_covariance_about_the_merged_mean():
    a = Moments(3, np.array([1.0, 0.0]), np.diag([2.0, 2.0]))  # Σ_a = I
    b = Moments(11, np.array([-1.0, 2.0]), np.diag([30.0, 10.0]))  # Σ_b = diag(3, 1)
    m = merge_keys([[a], [b]], "equal")
    assert np.allclose(m.mean, [0.0, 1.0])
    # ½ [I + (1,-1)(1,-1)ᵀ] + ½ [diag(3,1) + (-1,1)(-1,1)ᵀ]
    assert np.allclose(m.covariance, [[3.0, -1.0], [-1.0, 2.0]])
    assert m.count == 14


def test_the_weighting_is_part_of_the_normalizer_identity(tmp_path):
    store = _store(tmp_path)
    (c1,) = fit_store(store, key_weighting="count")
    (c2,) = fit_store(store, key_weighting="count")
    assert c2.unchanged and c2.fingerprint == c1.fingerprint  # an unchanged refit is a no-op
    (e1,) = fit_store(store, key_weighting="equal")
    assert not e1.unchanged and e1.fingerprint != c1.fingerprint  # changing the weighting is a refit
    assert current_fingerprint(store, "t") == e1.fingerprint
    assert normalizer_info(store, "t")["key_weighting"] == "equal"
    assert normalizer_info(store, "t", fingerprint=c1.fingerprint)["key_weighting"] == "count"
    (e2,) = fit_store(store, key_weighting="equal")
    assert e2.unchanged


def test_fit_phis_prints_each_keys_variance_in_the_teachers_space(tmp_path, repo):
    store = _store(tmp_path)
    raw = yaml.safe_load((repo / "pipelines.yaml").read_text())
    raw["pipelines"]["tiny"]["phis_key_weighting"] = "equal"
    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump(raw))
    args = ["fit-phis", "--config", str(config), "--store", str(store.path), "--plot", str(tmp_path / "s.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("variance in ")]
    assert lines == [
        f"variance in t/features space (equal-weighted keys): {LOW} 0.4",
        f"variance in t/features space (equal-weighted keys): {HIGH} 1.6",
    ]
