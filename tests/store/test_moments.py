"""Merged per-tar moments equal the moments of the concatenated data, even with a large mean."""

from __future__ import annotations

import numpy as np

from radio.store.moments import Moments, merge_all


def _merge_parts(x: np.ndarray, cuts: list[int]) -> Moments:
    parts = np.split(x, cuts)
    return merge_all([Moments.of(p) for p in parts])


def test_merge_equals_numpy_on_concatenated_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 7)) @ rng.normal(size=(7, 7)) + rng.normal(size=7)
    m = _merge_parts(x, [3, 10, 400, 401, 999])  # uneven parts, including single rows
    assert m.count == 1000
    assert np.allclose(m.mean, x.mean(0), rtol=1e-12, atol=0)
    assert np.allclose(m.covariance, np.cov(x, rowvar=False), rtol=1e-10, atol=0)


def test_large_mean_small_spread_is_stable():
    rng = np.random.default_rng(1)
    x = 1e4 + 1e-2 * rng.normal(size=(5000, 5))
    m = _merge_parts(x, list(range(100, 5000, 100)))
    ref = np.cov(x - x.mean(0), rowvar=False)  # numpy on centred data: the exact reference
    rel = np.abs(m.covariance - ref).max() / np.abs(ref).max()
    assert rel < 1e-10, rel
    assert np.allclose(m.mean, x.mean(0), rtol=1e-12, atol=0)
    # The sum-of-squares formula that the centred M2 replaces loses everything here:
    naive = (x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))) / (len(x) - 1)
    assert np.abs(naive - ref).max() / np.abs(ref).max() > 1e-3


def test_empty_parts_merge_as_identity():
    x = np.arange(12.0).reshape(6, 2)
    m = Moments.empty(2).merge(Moments.of(x)).merge(Moments.of(x[:0]))
    assert m.count == 6 and np.allclose(m.mean, x.mean(0))
