"""Strided ToMe: exact budgets, group maps, group means, unmerge, gradients (paper §4.7, A.8)."""

from __future__ import annotations

import pytest
import torch

from radio.compress import TokenMerger, merge_tokens, reconstruction_error, unmerge
from radio.compress.tome import LAYOUTS, grid_positions, stride_destinations

CASES = [  # (h, w, T): T > N/2, T < N/4, T ≥ and < the number of 2x2 windows, non-square, tiny
    (27, 27, 196),
    (64, 64, 256),
    (64, 64, 512),
    (16, 16, 200),
    (16, 16, 30),
    (12, 20, 50),
    (12, 20, 60),
    (27, 27, 9),
    (5, 7, 1),
    (1, 9, 2),
    (27, 27, 728),
]


def _x(b, n, c=8, seed=0, dtype=torch.float32):
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("h", "w", "t"), CASES)
def test_exact_target_count_and_a_consistent_map(h, w, t, layout):
    x = _x(2, h * w)
    res = merge_tokens(x, (h, w), t, layout=layout)
    assert res.tokens.shape == (2, t, 8)
    assert res.group.shape == (2, h * w) and res.group.dtype == torch.int64
    assert res.sizes.dtype == torch.int64 and res.sizes.shape == (2, t)
    assert (res.sizes.sum(1) == h * w).all()
    for b in range(2):
        assert torch.equal(torch.bincount(res.group[b], minlength=t), res.sizes[b])  # every group non-empty
        assert (res.anchors[b].diff() > 0).all()  # output in raster order of the surviving tokens
        assert (res.group[b, res.anchors[b]] == torch.arange(t)).all()
    assert res.counts[-1] == t
    pos = grid_positions((h, w))
    for b in range(2):
        for g in (0, t // 2, t - 1):
            assert torch.allclose(res.positions[b, g], pos[res.group[b] == g].mean(0))


@pytest.mark.parametrize(
    ("h", "w", "t", "stride"),
    [
        (27, 27, 196, (2, 2)),
        (27, 27, 169, (2, 2)),
        (16, 16, 200, (2, 2)),
        (12, 20, 60, (2, 2)),
        (12, 20, 100, (2, 2)),
        (27, 27, 81, (3, 3)),
        (13, 14, 40, (3, 2)),
    ],
)
def test_every_window_keeps_its_destination_when_the_budget_allows(h, w, t, stride):
    dst = stride_destinations((h, w), stride)
    assert len(dst) == (h // stride[0]) * (w // stride[1]) <= t
    res = merge_tokens(_x(3, h * w, seed=1), (h, w), t, stride=stride)
    assert res.counts == (t,)  # one round
    for b in range(3):
        assert len(set(res.group[b, dst].tolist())) == len(dst)  # no two windows share a token
        assert set(dst.tolist()) <= set(res.anchors[b].tolist())


def test_later_rounds_form_a_quadtree_over_the_strided_grid():
    # 64x64 → 256 with 2x2 windows: round 1 keeps one token per 2x2 window (1024), round 2 one per 4x4 window.
    res = merge_tokens(_x(2, 64 * 64, seed=2), (64, 64), 256, stride=(2, 2))
    assert res.counts == (1024, 256)
    for b in range(2):
        rows, cols = res.anchors[b] // 64, res.anchors[b] % 64
        windows = (rows // 4) * 16 + cols // 4
        assert sorted(windows.tolist()) == list(range(256))


def test_merged_tokens_are_the_means_of_their_sources():
    x = _x(2, 27 * 27, c=5, seed=3, dtype=torch.float64)
    res = merge_tokens(x, (27, 27), 30)  # three rounds: 169, 49, 30 (4x4 windows would leave 36 > 30)
    assert len(res.counts) == 3
    for b in range(2):
        for g in range(30):
            members = x[b, res.group[b] == g]
            assert len(members) == res.sizes[b, g]
            assert torch.allclose(res.tokens[b, g], members.mean(0), atol=1e-12)


def _quadtree_pieces(seed: int) -> tuple[torch.Tensor, int]:
    """A 16x16 partition: each 4x4 block is one piece, or split into four 2x2 pieces."""
    g = torch.Generator().manual_seed(seed)
    split = torch.rand(4, 4, generator=g) < 0.4
    labels = torch.zeros(16, 16, dtype=torch.long)
    k = 0
    for by in range(4):
        for bx in range(4):
            subs = [(dy, dx) for dy in (0, 2) for dx in (0, 2)] if split[by, bx] else [(0, 0)]
            for dy, dx in subs:
                size = 2 if split[by, bx] else 4
                labels[4 * by + dy : 4 * by + dy + size, 4 * bx + dx : 4 * bx + dx + size] = k
                k += 1
    return labels.reshape(-1), k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unmerge_is_exact_on_piecewise_constant_tokens(seed):
    labels, pieces = _quadtree_pieces(seed)
    # Small integers: group sums are exact in float32, so the means equal the pieces bit for bit.
    values = torch.randint(-9, 10, (2, pieces, 16), generator=torch.Generator().manual_seed(10 + seed)).float()
    x = values[:, labels]
    res = merge_tokens(x, (16, 16), pieces, stride=(2, 2))
    assert len(res.counts) == 2  # 2x2 windows, then 4x4 windows
    assert torch.equal(unmerge(res.tokens, res.group), x)
    assert reconstruction_error(x, unmerge(res.tokens, res.group)).mean_relative_mse == 0.0


def test_unmerge_is_exact_with_leftover_rows_and_columns():
    # 27x27: each 2x2 window, with the leftover row/column joined to the last window, is a piece.
    rows = torch.arange(27).clamp(max=25) // 2
    labels = (rows[:, None] * 13 + rows[None, :]).reshape(-1)
    x = torch.randint(-9, 10, (1, 169, 32), generator=torch.Generator().manual_seed(4)).float()[:, labels]
    res = merge_tokens(x, (27, 27), 169)
    assert torch.equal(unmerge(res.tokens, res.group), x)


def test_full_budget_is_the_identity():
    x = _x(2, 27 * 27)
    res = merge_tokens(x, (27, 27), 27 * 27)
    assert torch.equal(res.tokens, x) and res.counts == ()
    rec = reconstruction_error(x, unmerge(res.tokens, res.group))
    assert rec.mean_relative_mse == 0.0 and rec.mean_cosine == pytest.approx(1.0)


def test_deterministic_by_default_and_seeded_when_random():
    x = _x(2, 27 * 27, seed=5)
    a, b = merge_tokens(x, (27, 27), 64), merge_tokens(x, (27, 27), 64)
    assert torch.equal(a.group, b.group)
    r1 = merge_tokens(x, (27, 27), 64, layout="random", generator=torch.Generator().manual_seed(1))
    r1b = merge_tokens(x, (27, 27), 64, layout="random", generator=torch.Generator().manual_seed(1))
    r2 = merge_tokens(x, (27, 27), 64, layout="random", generator=torch.Generator().manual_seed(2))
    assert torch.equal(r1.group, r1b.group) and not torch.equal(r1.group, r2.group)
    jitter = merge_tokens(x, (27, 27), 196, generator=torch.Generator().manual_seed(0))  # tomesd offsets
    assert jitter.tokens.shape[1] == 196 and not torch.equal(jitter.group, merge_tokens(x, (27, 27), 196).group)


def test_reconstruction_error_definitions():
    x = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    rec = reconstruction_error(x, torch.tensor([[[3.0, 4.0], [0.0, 0.0]]]))
    assert rec.relative_mse.tolist() == [pytest.approx(1 / 26)]
    assert rec.cosine.tolist() == [pytest.approx(0.5)]


def test_bad_arguments():
    x = _x(1, 16)
    with pytest.raises(ValueError, match="outside"):
        merge_tokens(x, (4, 4), 17)
    with pytest.raises(ValueError, match="grid 4x5"):
        merge_tokens(x, (4, 5), 4)
    with pytest.raises(ValueError, match="unknown layout"):
        merge_tokens(x, (4, 4), 4, layout="zigzag")  # type: ignore[arg-type]


def test_token_merger_passes_gradients_to_every_input_token():
    x = _x(2, 27 * 27, c=6, seed=6).requires_grad_(True)
    merger = TokenMerger(tokens=196, stride=(2, 2))
    res = merger(x, (27, 27))
    assert res.tokens.shape == (2, 196, 6)
    weights = torch.randn(2, 196, 6, generator=torch.Generator().manual_seed(7))
    (res.tokens * weights).sum().backward()
    # d/dx of a group mean: each input token gets its group's weight divided by the group size.
    expected = unmerge(weights, res.group) / res.sizes.gather(1, res.group)[..., None]
    assert torch.allclose(x.grad, expected, atol=1e-6)
    assert (x.grad.abs().sum(-1) > 0).all()
    assert "tokens=196" in repr(merger)


def test_half_precision_inputs():
    x = _x(1, 16 * 16, seed=8).half()
    res = merge_tokens(x, (16, 16), 30)
    assert res.tokens.dtype == torch.float16 and res.tokens.shape == (1, 30, 8)


@pytest.mark.parametrize(
    ("grid", "t", "k"),
    [
        ((48, 48), 256, 3),  # the paper's r = 2048: 2304 → 256 in one round needs 3x3 windows (256 destinations)
        ((64, 64), 512, 3),  # r = 3584: 441 destinations
        ((64, 64), 256, 4),  # r = 3840
        ((48, 48), 196, 4),  # r = 2108: 144 destinations (3x3 would give 256 > 196)
        ((32, 32), 256, 2),  # r = 768
        ((27, 27), 196, 2),  # 169 destinations
    ],
)
def test_the_stride_is_chosen_so_one_round_reaches_the_budget(grid, t, k):
    from radio.compress.tome import auto_stride

    assert auto_stride(grid, t) == (k, k)
    res = merge_tokens(_x(1, grid[0] * grid[1], c=8, seed=5), grid, t, stride="auto")
    assert res.stride == (k, k) and res.counts == (t,) and res.rounds == 1


def test_budgets_below_the_coarsest_auto_window_keep_multi_round():
    from radio.compress.tome import MAX_AUTO_WINDOW, auto_stride

    # 27x27 → 30: even 4x4 windows leave 6·6 = 36 > 30 destinations, so 2x2 windows and rounds.
    assert (27 // MAX_AUTO_WINDOW) ** 2 > 30 and auto_stride((27, 27), 30) == (2, 2)
    res = merge_tokens(_x(1, 729, c=8, seed=6), (27, 27), 30, stride="auto")
    assert res.stride == (2, 2) and res.counts == (169, 49, 30) and res.rounds == 3
