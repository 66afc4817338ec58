"""Exact Hadamard matrices: ±1 entries with H Hᵀ = n I, for PHI-S's rotation (paper §4.4).

Constructions, combined by Kronecker products (H_a ⊗ H_b is Hadamard of order a·b):

- Sylvester: order 2 (and so every power of two).
- Paley I: order q + 1 for a prime q ≡ 3 (mod 4).
- Paley II: order 2(q + 1) for a prime q ≡ 1 (mod 4).

That covers every feature width the recipe needs (192 = 12·16, 768 = 12·64, 1152 = 36·32,
1280 = 20·64, 1536 = 12·128, powers of two). An order none of these reach is refused with
:class:`HadamardError`; there is no random fallback, since PHI-S must be reproducible.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

from radio.errors import RadioError


class HadamardError(RadioError):
    """No exact construction is known here for the requested order."""


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _jacobsthal(q: int) -> np.ndarray:
    """``Q[i, j] = χ(i - j)`` with χ the quadratic character mod the prime ``q`` (χ(0) = 0).

    The sign convention of NVlabs/FeatSharp and RADIO (``χ(j - i)`` would be ``Qᵀ``, which for
    q ≡ 3 (mod 4) is ``-Q``), so our Hadamard matrices equal theirs. Only the matrix: the PHI-S
    normalizers are not interchangeable, because :func:`~radio.store.phis.fit_phis` orders the
    eigenvectors by descending eigenvalue and FeatSharp keeps ``eigh``'s ascending order, so H
    meets the principal axes in the opposite order and the rotations H Uᵀ differ."""
    chi = np.full(q, -1, dtype=np.int64)
    chi[0] = 0
    chi[[(x * x) % q for x in range(1, q)]] = 1
    idx = (np.arange(q)[:, None] - np.arange(q)[None, :]) % q
    return chi[idx]


def _paley1(q: int) -> np.ndarray:
    """Order q + 1, q ≡ 3 (mod 4): H = I + [[0, 1ᵀ], [-1, Q]] (Q is antisymmetric)."""
    n = q + 1
    s = np.zeros((n, n), dtype=np.int64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
    return np.eye(n, dtype=np.int64) + s


def _paley2(q: int) -> np.ndarray:
    """Order 2(q + 1), q ≡ 1 (mod 4), from the symmetric conference matrix C = [[0, 1ᵀ], [1, Q]]:
    every 0 of C becomes [[1, -1], [-1, -1]] and every ±1 becomes ±[[1, 1], [1, -1]], i.e.
    H = C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]] (FeatSharp's and RADIO's convention)."""
    n = q + 1
    c = np.zeros((n, n), dtype=np.int64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
    zero = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    unit = np.array([[1, 1], [1, -1]], dtype=np.int64)
    return np.kron(c, unit) + np.kron(np.eye(n, dtype=np.int64), zero)


@cache
def _recipe(n: int) -> tuple | None:
    """How to build order ``n``: ("one",), ("paley1", q), ("paley2", q), ("kron", a, b) or None."""
    if n == 1:
        return ("one",)
    if n == 2:
        return ("sylvester",)
    if n % 4:
        return None
    # Peel Sylvester factors first (2 ⊗ H(n/2)): powers of two are pure Sylvester, and other widths
    # get the smallest Paley core, as RADIO's released normalizers do (768 = sylvester(64) ⊗ paley1(11)).
    if _recipe(n // 2) is not None:
        return ("kron", 2, n // 2)
    if _is_prime(n - 1) and (n - 1) % 4 == 3:
        return ("paley1", n - 1)
    if _is_prime(n // 2 - 1) and (n // 2 - 1) % 4 == 1:
        return ("paley2", n // 2 - 1)
    for a in range(4, int(n**0.5) + 1, 4):
        if n % a == 0 and _recipe(a) is not None and _recipe(n // a) is not None:
            return ("kron", a, n // a)
    return None


def constructible(n: int) -> bool:
    """Whether :func:`hadamard` can build order ``n``."""
    return n >= 1 and _recipe(n) is not None


def _factors(n: int) -> list[tuple]:
    r = _recipe(n)
    if r is None:
        raise HadamardError(_refusal(n))
    return _factors(r[1]) + _factors(r[2]) if r[0] == "kron" else [r]


def describe(n: int) -> str:
    """The construction of order ``n`` in words, e.g. ``sylvester(64) ⊗ paley1(q=11)``."""
    factors = _factors(n)
    twos = sum(f[0] == "sylvester" for f in factors)
    words = [f"sylvester({2**twos})"] if twos else []
    words += [f"{f[0]}(q={f[1]})" for f in factors if f[0] in ("paley1", "paley2")]
    return " ⊗ ".join(words) or "1"


def _refusal(n: int) -> str:
    return (
        f"no exact Hadamard matrix of order {n}: Sylvester, Paley I/II and their Kronecker products "
        f"do not reach it (PHI-S needs one of the feature width)"
    )


@lru_cache(maxsize=32)
def _build(n: int) -> np.ndarray:
    r = _recipe(n)
    if r is None:
        raise HadamardError(_refusal(n))
    kind = r[0]
    if kind == "one":
        return np.ones((1, 1), dtype=np.int64)
    if kind == "sylvester":
        return np.array([[1, 1], [1, -1]], dtype=np.int64)
    if kind == "paley1":
        return _paley1(r[1])
    if kind == "paley2":
        return _paley2(r[1])
    return np.kron(_build(r[1]), _build(r[2]))


def hadamard(n: int) -> np.ndarray:
    """The ±1 Hadamard matrix of order ``n`` as ``[n, n] int64``; H Hᵀ = n I exactly."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise HadamardError(f"Hadamard order must be a positive integer, not {n!r}")
    h = _build(int(n)).copy()
    h.flags.writeable = False
    return h


def normalized_hadamard(n: int) -> np.ndarray:
    """``H / sqrt(n)`` as ``[n, n] float64``: orthogonal, every entry ±1/√n."""
    return hadamard(n).astype(np.float64) / np.sqrt(n)
