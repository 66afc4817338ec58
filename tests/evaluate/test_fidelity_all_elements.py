"""The all-element F (RADIO's examples/mode_switching.py), labelled beside Table 3's per-channel F (issue 23 §6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radio.evaluate.fidelity import FidelityAccumulator, fidelity, fidelity_all_elements, key_fidelity
from radio.store.moments import Moments
from radio.store.normalizers import Normalizer
from radio.store.phis import fit_phis

# Two channels over three samples, channel means 2 and 12: channel variances 2/3 and 8, MSE 4/6.
TEACHER = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 16.0]], dtype=torch.float64)
PREDICTION = TEACHER - torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)


def test_offset_channel_means_raise_the_all_element_f_only():
    # Per channel (Table 3): ((2/3 + 8) / 2) / (4/6) = 6.5, blind to the channel means.
    assert fidelity(TEACHER, PREDICTION) == pytest.approx(6.5, rel=1e-12)
    # All elements (grand mean 7): 13/3 + ((2 - 7)² + (12 - 7)²) / 2 = 88/3, over 4/6: 44.
    assert fidelity_all_elements(TEACHER, PREDICTION) == pytest.approx(44.0, rel=1e-12)
    # Equal channel means: the two agree.
    same = TEACHER - torch.tensor([0.0, 10.0], dtype=torch.float64)
    assert fidelity_all_elements(same, same - (TEACHER - PREDICTION)) == pytest.approx(6.5, rel=1e-12)


def test_the_accumulator_reports_it_batch_by_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 8)) + np.arange(8) * 3.0  # offset channel means
    norm = Normalizer.from_phis("phis", fit_phis(Moments.of(x)))
    t = torch.from_numpy(x).view(10, 32, 8)
    pred = t + 0.2 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acc = FidelityAccumulator("k@1", "features", norm)
    for i in range(0, 10, 4):
        acc.add(t[i : i + 4], pred[i : i + 4])
    got = acc.result()
    assert got.fidelity_all_elements == pytest.approx(fidelity_all_elements(t, pred), rel=1e-10)
    assert got.fidelity == pytest.approx(fidelity(t, pred), rel=1e-10)
    assert got.fidelity_all_elements > 10 * got.fidelity  # spread of means 3²·(8² − 1)/12 = 47 against unit variance
    assert key_fidelity("k@1", "features", t, pred, norm).fidelity_all_elements == pytest.approx(
        got.fidelity_all_elements, rel=1e-10
    )
