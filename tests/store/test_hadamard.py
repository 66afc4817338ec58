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


def test_paley_signs_match_featsharp_entries_derived_by_hand():
    # FeatSharp/RADIO: Q[i, j] = χ(i - j); Paley I: H = I + [[0, 1ᵀ], [-1, Q]]; Paley II: each 0 of
    # C = [[0, 1ᵀ], [1, Q]] → [[1, -1], [-1, -1]], each ±1 → ±[[1, 1], [1, -1]]; Sylvester factors first.
    from radio.store.hadamard import _paley1, _paley2

    # q = 3: squares mod 3 = {1}, so χ(1) = 1, χ(2) = -1; Q = [[0, χ(2), χ(1)], [χ(1), 0, χ(2)], [χ(2), χ(1), 0]].
    assert _paley1(3).tolist() == [[1, 1, 1, 1], [-1, 1, -1, 1], [-1, 1, 1, -1], [-1, -1, 1, 1]]
    # q = 7: squares {1, 2, 4}. Row 1 is e_1 + Q[0] = χ(0 - j): χ(6) = -1, χ(5) = -1, χ(4) = 1, ...
    assert _paley1(7)[1].tolist() == [-1, 1, -1, -1, 1, -1, 1, 1]
    assert _paley1(7)[2, 1] == 1  # χ(1 - 0)
    # q = 5 (Paley II, order 12): squares {1, 4}; blocks (0, 0): C = 0; (1, 2): χ(-1) = χ(4) = 1;
    # (1, 3): χ(-2) = χ(3) = -1; (1, 1): C = 0.
    p2 = _paley2(5)
    assert p2[0:2, 0:2].tolist() == [[1, -1], [-1, -1]] and p2[2:4, 2:4].tolist() == [[1, -1], [-1, -1]]
    assert p2[0:2, 2:4].tolist() == [[1, 1], [1, -1]]
    assert p2[2:4, 4:6].tolist() == [[1, 1], [1, -1]]
    assert p2[2:4, 6:8].tolist() == [[-1, -1], [-1, 1]]
    # Order 12 is paley1(q=11): squares mod 11 = {1, 3, 4, 5, 9}; row 1 = e_1 + χ(-j).
    assert describe(12) == "paley1(q=11)"
    assert hadamard(12)[1].tolist() == [-1, 1, -1, 1, -1, -1, -1, 1, 1, 1, -1, 1]
    # 24 = sylvester(2) ⊗ paley1(q=11) = [[P, P], [P, -P]], as FeatSharp's kron(syl, paley).
    h24, p12 = hadamard(24), hadamard(12)
    assert np.array_equal(h24, np.block([[p12, p12], [p12, -p12]]))
