"""Hadamard matrices are exact for every order the construction claims, and refused otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from radio.store.hadamard import HadamardError, constructible, describe, hadamard, normalized_hadamard

RECIPE_ORDERS = (192, 256, 384, 768, 1024, 1152, 1280, 1536)


def _exact(n: int) -> bool:
    h = hadamard(n)
    assert h.shape == (n, n) and set(np.unique(h)) <= {-1, 1}
    # ±1 entries and sums ≤ 2048 are exact integers in float32, so this is integer arithmetic.
    hf = h.astype(np.float32)
    return bool((hf @ hf.T == n * np.eye(n, dtype=np.float32)).all())


@pytest.mark.parametrize("n", RECIPE_ORDERS)
def test_recipe_orders_are_exact(n):
    assert constructible(n) and _exact(n)


def test_every_claimed_order_up_to_2048_is_exact():
    claimed = [n for n in range(1, 2049) if constructible(n)]
    assert len(claimed) > 300  # powers of two, Paley I/II cores and their products
    assert {1, 2, 4, 12, 20, 28, 36} <= set(claimed)
    for n in claimed:
        assert _exact(n), n


def test_constructions_are_the_expected_ones():
    assert describe(1024) == "sylvester(1024)"
    assert describe(768) == "sylvester(64) ⊗ paley1(q=11)"
    assert describe(1152) == "sylvester(32) ⊗ paley2(q=17)"
    assert describe(1280) == "sylvester(64) ⊗ paley1(q=19)"


@pytest.mark.parametrize("n", [3, 6, 668])
def test_unbuildable_orders_are_refused_not_approximated(n):
    assert not constructible(n)
    with pytest.raises(HadamardError) as e:
        hadamard(n)
    assert str(e.value) == (
        f"no exact Hadamard matrix of order {n}: Sylvester, Paley I/II and their Kronecker products "
        "do not reach it (PHI-S needs one of the feature width)"
    )


def test_normalized_is_orthogonal():
    h = normalized_hadamard(384)
    assert np.allclose(h @ h.T, np.eye(384), atol=1e-12)
    assert np.allclose(np.abs(h), 1 / np.sqrt(384))
