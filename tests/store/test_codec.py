"""Compact codecs: encode/decode against hand computations, and the error they leave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radio.store.codec import (
    CodecError,
    decode,
    decode_on_device,
    encode,
    fit_codec,
    rank_for_variance,
    variance_retained,
)
from radio.store.moments import Moments
from radio.store.phis import fit_phis


def _phis(c: int = 4, seed: int = 0, decay: float = 1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, c)) * (decay ** np.arange(c)) @ np.linalg.qr(rng.normal(size=(c, c)))[0] + 3.0
    return fit_phis(Moments.of(x)), x


def test_int8_round_trip_matches_hand_computation():
    p, _ = _phis()
    codec = fit_codec(p, "int8", clip=4.0)
    s = 4.0 / 127  # one scale per key: clip σ over 127 steps
    assert np.allclose(codec.scale, s)
    y = torch.tensor([[0.0, 1.0, -1.0, 10.0], [s * 2.4, -s * 2.6, s * 0.5, -4.0]])
    q = encode(codec, y)
    # Round half to even, clamp at ±127 (10σ is clipped to 4σ).
    assert q.dtype == torch.int8
    assert q.tolist() == [[0, round(1 / s), -round(1 / s), 127], [2, -3, 0, -127]]
    assert torch.allclose(decode(codec, q), q.float() * s)


def test_rank_codec_keeps_the_leading_principal_coefficients():
    p, x = _phis(c=4, decay=0.1)
    codec = fit_codec(p, "int8", rank=2, clip=4.0)
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0  # Sylvester order 4
    assert np.allclose(codec.basis, h[:, :2])
    sigma = np.sqrt(p.eigenvalues[:2]) / p.phi
    assert np.allclose(codec.scale, 4.0 * sigma / 127, rtol=1e-6)
    y = torch.from_numpy(p.normalize(x[:50])).float()
    q = encode(codec, y)
    z = y.numpy() @ h[:, :2]  # the principal coefficients, by hand
    assert np.array_equal(q.numpy(), np.clip(np.round(z / codec.scale), -127, 127).astype(np.int8))
    assert np.allclose(decode(codec, q).numpy(), (q.numpy() * codec.scale) @ h[:, :2].T, atol=1e-6)
    # What truncation loses is the dropped share of the spectrum (quantization adds ~1e-4).
    all_y = torch.from_numpy(p.normalize(x)).float()
    kept = variance_retained(all_y, decode(codec, encode(codec, all_y)))
    assert kept == pytest.approx(p.variance_share(2), abs=2e-3)


def test_int8_keeps_0999_of_the_variance_and_fp8_is_one_byte():
    p, x = _phis(c=64, seed=1, decay=0.97)
    y = torch.from_numpy(p.normalize(x)).float()
    for name, floor in (("int8", 0.9995), ("fp8", 0.995)):
        codec = fit_codec(p, name)
        q = encode(codec, y)
        assert q.element_size() == 1
        assert variance_retained(y, decode(codec, q)) > floor


def test_decode_on_device_is_decode_with_tensors():
    p, x = _phis(c=8, decay=0.8)
    codec = fit_codec(p, "int8", rank=3)
    q = encode(codec, torch.from_numpy(p.normalize(x[:5])).float())
    out = decode_on_device(q, torch.from_numpy(codec.scale), torch.from_numpy(codec.basis))
    assert out.shape == (5, 8) and out.dtype == torch.float32
    assert torch.equal(out, decode(codec, q))


def test_rank_for_variance_and_bad_parameters():
    ev = np.array([4.0, 3.0, 2.0, 1.0])
    assert [rank_for_variance(ev, v) for v in (0.4, 0.7, 0.9, 1.0)] == [1, 2, 3, 4]
    p, _ = _phis()
    with pytest.raises(CodecError, match=r"--rank 5: must be in 1..4"):
        fit_codec(p, "int8", rank=5)
    with pytest.raises(CodecError, match="unknown codec 'int4'"):
        fit_codec(p, "int4")
