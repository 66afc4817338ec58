"""Fidelity F = Var(teacher) / MSE (paper eq. 2, Table 3's arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radio.evaluate.fidelity import FidelityAccumulator, fidelity, geometric_mean, key_fidelity, mse, variance_ratio
from radio.store.moments import Moments
from radio.store.normalizers import Normalizer
from radio.store.phis import fit_phis


def test_perfect_prediction_is_infinite_and_the_mean_is_one():
    t = torch.randn(10, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    assert math.isinf(fidelity(t, t.clone()))
    mean = t.reshape(-1, 8).mean(0).expand_as(t)
    assert fidelity(t, mean) == pytest.approx(1.0, rel=1e-12)


def test_hand_computed_example():
    # Two channels over three samples. Teacher variances (population): ch0 [1,2,3] → 2/3, ch1 [0,0,6] → 8.
    teacher = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]])
    # Errors: ch0 [0, 1, 0], ch1 [1, 1, 1] (a constant bias): MSE = 4/6 over the 6 values.
    prediction = teacher - torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    assert mse(teacher, prediction) == pytest.approx(4 / 6)
    # The paper's F: mean channel variance / MSE (Table 3: 27.263 / 3.719 = 7.331).
    assert fidelity(teacher, prediction) == pytest.approx(((2 / 3 + 8) / 2) / (4 / 6), rel=1e-12)
    # The variance ratio ignores the bias: error variances ch0 2/9, ch1 0.
    assert variance_ratio(teacher, prediction) == pytest.approx((2 / 3 + 8) / (2 / 9), rel=1e-12)


def test_a_constant_bias_lowers_f_as_in_the_paper():
    t = torch.randn(4000, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    noise = 0.3 * torch.randn(t.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    # Var(t) ≈ 1, noise MSE 0.09 (F ≈ 11.1); a 0.5 bias per channel adds 0.25 to the MSE: F ≈ 1 / 0.34.
    assert fidelity(t, t + noise) == pytest.approx(1 / 0.09, rel=0.05)
    assert fidelity(t, t + noise + 0.5) == pytest.approx(1 / 0.34, rel=0.05)
    assert variance_ratio(t, t + noise + 0.5) == pytest.approx(variance_ratio(t, t + noise), rel=1e-12)


def test_normalized_space_and_geometric_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) * np.logspace(1, -1, 12)
    norm = Normalizer.from_phis("phis", fit_phis(Moments.of(x)))
    t = torch.from_numpy(x)
    pred = t + 0.1 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = key_fidelity("k@1", "features", t, pred, norm)
    # PHI-S is a rotation and one scale, so F is the same in both spaces (no column for it).
    tn, pn = norm.normalize(t), norm.normalize(pred)
    assert f.fidelity == pytest.approx(fidelity(tn, pn), rel=1e-9)
    assert f.mse_normalized == pytest.approx(mse(tn, pn), rel=1e-12)
    assert f.fidelity > 10
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert math.isinf(geometric_mean([2.0, math.inf]))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"fidelity needs equal shapes, got \(2, 3\) and \(3, 2\)"):
        fidelity(torch.zeros(2, 3), torch.zeros(3, 2))


def test_accumulator_over_batches_equals_one_shot():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8)) * np.logspace(1, -1, 8) + 50.0  # a large mean: Chan merging matters
    norm = Normalizer.from_phis("phis", fit_phis(Moments.of(x)))
    t = torch.from_numpy(x).view(10, 4, 10, 8)
    pred = t + 0.3 * torch.randn(t.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    acc = FidelityAccumulator("k@1", "features", norm)
    for i in range(0, 10, 3):  # uneven batches
        acc.add(t[i : i + 3], pred[i : i + 3])
    got, want = acc.result(), key_fidelity("k@1", "features", t, pred, norm)
    for name in ("fidelity", "variance_ratio", "mse", "mse_normalized"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-10), name
