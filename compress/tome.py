"""Token merging (paper §4.7, A.8): bipartite soft matching with strided destinations.

A token grid ``x [B, N, C]`` (N = h·w, row-major) is merged down to exactly ``T`` tokens:

1. **Destinations on a strided grid** (tomesd). The grid is tiled by ⌊h/sy⌋·⌊w/sx⌋ windows of
   sy×sx tokens; each window holds one destination, every other token is a source. Rows and
   columns left over when the stride does not divide the grid are sources. The destination is
   the window's token nearest its centre (ties: the first in raster order, so top-left for 2×2,
   the centre for 3×3), or a random one when a generator is given (tomesd's random offsets,
   one draw shared by the batch).
2. **Bipartite soft matching** on the tokens' own features (cosine similarity; the paper found
   features match better than attention keys): every source finds its most similar
   destination anywhere in the image; the ``r`` sources with the highest similarity are merged
   into it, the others stay. Several sources may share a destination; no chains in one round.
3. **Size-weighted averages.** Every merged token is recomputed from the input as the exact
   mean of the input tokens in its group, so after any number of rounds ``tokens[b, t]`` is the
   mean of ``x[b, group[b] == t]`` and ``sizes[b, t]`` the group's size.
4. **Rounds until exactly T.** A round removes at most its number of sources (``n - #dst``),
   and the batch shares one ``r`` per round (every image ends with T tokens), so each round
   takes ``r = min(n - T, min over images of the cap)``: greedy, as many merges as the layout
   allows. When T ≥ the number of windows one round suffices (729 → 196 with 2×2: 169
   destinations, r = 533), and every window keeps its destination. Otherwise later rounds work
   on the merged tokens, with the windows coarsened 2× per round in each direction (2×2 → 4×4
   → 8×8 … input tokens). A merged token is placed by its *anchor*, the input position of its
   surviving token (its destination), not by its group's mean position: a group may collect
   sources from anywhere in the image, and mean positions drift to the centre (with noise
   features the 169 groups of 27×27 fill only 30 of the 49 4×4 windows), while anchors stay on
   the strided grid, so the rounds form a quadtree over it. Each window holding an anchor gets
   one destination, the token whose anchor is nearest the window centre; partial windows at the
   border count (every region keeps a token). Once a window spans the whole grid a round can go
   down to one token, so any 1 ≤ T < N is reached (27×27 → 9: 729 → 169 → 49 → 16 → 9).

**One round** (``stride="auto"``): the smallest square window k×k, 2 ≤ k ≤ ``MAX_AUTO_WINDOW``,
whose ⌊h/k⌋·⌊w/k⌋ destinations fit the budget T, so ONE round merges N → T, as the paper's
single "ToMe r=2048" (2304 → 256 takes 3×3 windows: 16·16 = 256 destinations; 4096 → 512 takes
3×3, 4096 → 256 and 2304 → 196 take 4×4). When even ``MAX_AUTO_WINDOW`` windows give more
than T destinations it falls back to 2×2 windows and rounds. The default stays 2×2 and rounds:
on the test pictures (tests/compress/test_images.py) one round had 5-35 % higher
reconstruction error at 64² → 512 and 64² → 256 (e.g. 0.0095 vs 0.0070), see README.

Output order: surviving tokens keep their relative input order, so the merged tokens are in
raster order of each group's surviving (destination) token, which a VLM's position handling
can rely on; ``positions`` gives each group's mean (row, col) as well.

Layouts: ``"strided"`` (above) and ``"random"`` (the sink-layout baseline of Table A9): the same
number of destinations per round as the strided layout, drawn uniformly from all current tokens
(seeded; round 1 shared by the batch). Everything else (matching, averaging, rounds) is the same.

The matching is discrete and runs without gradients; the merged tokens are sums of the input
tokens divided by group sizes, so gradients flow to ``x`` through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F

Layout = Literal["strided", "random"]
LAYOUTS: tuple[str, ...] = ("strided", "random")
DEFAULT_SEED = 0
MAX_AUTO_WINDOW = 4  # the largest k×k window auto_stride picks for a one-round merge

__all__ = [
    "LAYOUTS",
    "MAX_AUTO_WINDOW",
    "auto_stride",
    "MergeResult",
    "Reconstruction",
    "grid_positions",
    "group_means",
    "match_round",
    "merge_tokens",
    "reconstruction_error",
    "stride_destinations",
    "unmerge",
    "wide_float",
    "window_destinations",
]


@dataclass(frozen=True)
class MergeResult:
    """``tokens [B, T, C]`` (group means), ``sizes [B, T]`` int64 (sum to N), ``group [B, N]``
    int64 (input token → merged token), ``positions [B, T, 2]`` float64 (each group's mean
    (row, col) on the input grid), ``anchors [B, T]`` int64 (input index of each group's
    surviving token, ascending), ``counts``: token count after each merging round, ``stride``:
    the first round's destination windows."""

    tokens: torch.Tensor
    sizes: torch.Tensor
    group: torch.Tensor
    positions: torch.Tensor
    anchors: torch.Tensor
    counts: tuple[int, ...] = ()
    stride: tuple[int, int] = (2, 2)

    @property
    def rounds(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class Reconstruction:
    """Per image: ``relative_mse [B]`` = ‖x_rec − x‖² / ‖x‖², ``cosine [B]`` = mean over tokens of
    cos(x_rec, x). Both float64."""

    relative_mse: torch.Tensor
    cosine: torch.Tensor

    @property
    def mean_relative_mse(self) -> float:
        return float(self.relative_mse.mean())

    @property
    def mean_cosine(self) -> float:
        return float(self.cosine.mean())


def grid_positions(grid: tuple[int, int], device=None) -> torch.Tensor:
    """``[h·w, 2]`` float64 (row, col) of every token of an h×w grid, row-major."""
    h, w = grid
    rows = torch.arange(h, device=device, dtype=torch.float64)
    cols = torch.arange(w, device=device, dtype=torch.float64)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2)


def group_means(x: torch.Tensor, group: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``x [B, N, C]`` over each of the ``n`` groups of ``group [B, N]`` (values in [0, n)):
    ``(means [B, n, C], sizes [B, n] int64)``. Differentiable in ``x``; every group must be
    non-empty."""
    b, big_n, c = x.shape
    flat = (group + torch.arange(b, device=group.device)[:, None] * n).reshape(-1)
    sums = x.new_zeros(b * n, c).index_add(0, flat, x.reshape(b * big_n, c))
    sizes = torch.bincount(flat, minlength=b * n).reshape(b, n)
    return sums.reshape(b, n, c) / sizes[..., None].to(x.dtype), sizes


def wide_float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tokens are summed in float32; float32 and float64 as they are."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def unmerge(tokens: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``tokens [B, T, C]``, ``group [B, N]`` → ``[B, N, C]``: every input position gets its group's
    token (equal to undoing every round in reverse order)."""
    b, t, c = tokens.shape
    flat = (group + torch.arange(b, device=group.device)[:, None] * t).reshape(-1)
    return tokens.reshape(b * t, c)[flat].reshape(b, group.shape[1], c)


def reconstruction_error(x: torch.Tensor, x_rec: torch.Tensor) -> Reconstruction:
    """Relative MSE and mean cosine similarity per image of ``x_rec`` against ``x``, both
    ``[B, N, C]``. A zero image has relative MSE 0 if reconstructed exactly, else ∞."""
    if x.shape != x_rec.shape:
        raise ValueError(f"reconstruction needs equal shapes, got {tuple(x.shape)} and {tuple(x_rec.shape)}")
    x64, r64 = x.detach().double(), x_rec.detach().double()
    err = ((r64 - x64) ** 2).flatten(1).sum(1)
    ref = (x64**2).flatten(1).sum(1)
    rel = torch.where(err == 0, torch.zeros_like(err), err / ref)
    cos = F.cosine_similarity(r64, x64, dim=-1).mean(1)
    return Reconstruction(rel, cos)


def auto_stride(grid: tuple[int, int], tokens: int) -> tuple[int, int]:
    """The destination windows for merging an h×w grid to ``tokens``: the smallest square k×k,
    2 ≤ k ≤ ``MAX_AUTO_WINDOW``, with ⌊h/k⌋·⌊w/k⌋ ≤ ``tokens`` (one round suffices), else 2×2
    (several rounds)."""
    h, w = grid
    for k in range(2, MAX_AUTO_WINDOW + 1):
        if 0 < (h // k) * (w // k) <= tokens:
            return (k, k)
    return (2, 2)


def stride_destinations(grid: tuple[int, int], stride: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Indices ``[⌊h/sy⌋·⌊w/sx⌋]`` (raster order) of the first round's destinations of the strided
    layout without a generator: one per full sy×sx window, the token nearest its centre."""
    pos = grid_positions(grid)[None]
    return window_destinations(pos, grid, stride, partial=False)[0].nonzero().flatten()


def window_destinations(
    positions: torch.Tensor,
    grid: tuple[int, int],
    window: tuple[int, int],
    *,
    partial: bool,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """One destination per window that holds a token: ``is_dst [B, n]`` bool.

    ``positions [B, n, 2]`` (row, col) of the current tokens on the input grid (their anchors);
    ``window`` (wh, ww) in input tokens. ``partial``: border windows smaller than ``window``
    count (else their tokens are all sources). In each window the token with the smallest key wins (ties:
    the lowest index); ``keys [B or 1, n]`` default to the squared distance to the window centre.
    """
    h, w = grid
    wh, ww = window
    nwy, nwx = (-(-h // wh), -(-w // ww)) if partial else (h // wh, w // ww)
    wy = torch.div(positions[..., 0], wh, rounding_mode="floor").long()
    wx = torch.div(positions[..., 1], ww, rounding_mode="floor").long()
    inside = (wy < nwy) & (wx < nwx)
    wid = torch.where(inside, wy * nwx + wx, torch.full_like(wy, -1))
    if keys is None:
        centre_y = (wy.double() + 0.5) * wh - 0.5
        centre_x = (wx.double() + 0.5) * ww - 0.5
        keys = (positions[..., 0] - centre_y) ** 2 + (positions[..., 1] - centre_x) ** 2
    keys = keys.expand_as(wid)
    # Two stable sorts = sort by (window, key, index): the first token of each window's run wins.
    by_key = torch.sort(keys, dim=1, stable=True).indices
    by_window = torch.sort(wid.gather(1, by_key), dim=1, stable=True).indices
    order = by_key.gather(1, by_window)
    sorted_wid = wid.gather(1, order)
    first = torch.ones_like(sorted_wid, dtype=torch.bool)
    first[:, 1:] = sorted_wid[:, 1:] != sorted_wid[:, :-1]
    first &= sorted_wid >= 0
    return torch.zeros_like(first).scatter(1, order, first)


def match_round(metric: torch.Tensor, is_dst: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of bipartite soft matching: ``metric [B, n, C]``, ``is_dst [B, n]`` bool, ``r``
    merges per image (at most the number of sources of every image, and each image needs a
    destination when r > 0). Returns ``newidx [B, n]`` int64, each token's index among the
    ``n - r`` survivors (sources merged into a destination get the destination's index), and
    ``kept [B, n]`` bool, the survivors."""
    b, n, _ = metric.shape
    if r == 0:
        return torch.arange(n, device=metric.device).expand(b, n).clone(), is_dst.new_ones(b, n)
    n_dst = is_dst.sum(1)
    d_max, d_min = int(n_dst.max()), int(n_dst.min())
    # Destinations first (in index order), then sources: per image a padded [n_dst | sources] split.
    perm = torch.sort((~is_dst).to(torch.uint8), dim=1, stable=True).indices
    dst_tok, row_tok = perm[:, :d_max], perm[:, d_min:]
    m = F.normalize(metric.float(), dim=-1)
    a = m.gather(1, row_tok[..., None].expand(-1, -1, m.shape[-1]))
    bb = m.gather(1, dst_tok[..., None].expand(-1, -1, m.shape[-1]))
    scores = a @ bb.transpose(1, 2)  # [B, n - d_min, d_max] cosine similarities
    if d_max > d_min:  # images with fewer destinations: pad columns, and rows that are destinations
        scores.masked_fill_(torch.arange(d_max, device=m.device) >= n_dst[:, None, None], -torch.inf)
    node_max, node_idx = scores.max(dim=-1)
    if d_max > d_min:
        node_max.masked_fill_(torch.arange(n - d_min, device=m.device) < (n_dst - d_min)[:, None], -torch.inf)
    best = torch.sort(node_max, dim=1, descending=True, stable=True).indices[:, :r]
    src = row_tok.gather(1, best)
    dst = dst_tok.gather(1, node_idx.gather(1, best))
    keep = torch.ones(b, n, dtype=torch.bool, device=m.device).scatter(1, src, False)
    rank = keep.long().cumsum(1) - 1
    return rank.scatter(1, src, rank.gather(1, dst)), keep


def _random_subset(counts: torch.Tensor, n: int, batch: int, generator: torch.Generator, shared: bool) -> torch.Tensor:
    """``[batch, n]`` bool with ``counts[b]`` True entries drawn uniformly (one draw if ``shared``)."""
    noise = torch.rand(1 if shared else batch, n, generator=generator, device=generator.device).to(counts.device)
    rank = noise.argsort(dim=1).argsort(dim=1).expand(batch, n)
    return rank < counts[:, None]


def merge_tokens(
    x: torch.Tensor,
    grid: tuple[int, int],
    tokens: int,
    *,
    stride: tuple[int, int] | str = (2, 2),
    layout: Layout = "strided",
    generator: torch.Generator | None = None,
    metric: torch.Tensor | None = None,
) -> MergeResult:
    """Merge ``x [B, N, C]`` on an h×w grid (N = h·w, row-major) to exactly ``tokens`` tokens.

    ``metric [B, N, Cm]``: what similarity is measured on (default: ``x`` itself). ``generator``:
    with ``layout="strided"``, random destinations within each window (tomesd); with
    ``"random"``, the draw (default: seeded with ``DEFAULT_SEED``). Without one the result is
    deterministic. ``tokens == N`` returns the identity merge. ``stride="auto"``: :func:`auto_stride` (one round where it can).
    """
    b, n_in, _ = x.shape
    h, w = grid
    if h * w != n_in:
        raise ValueError(f"grid {h}x{w} has {h * w} tokens, x has {n_in}")
    if not 1 <= tokens <= n_in:
        raise ValueError(f"target of {tokens} tokens is outside [1, {n_in}]")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    stride = auto_stride(grid, tokens) if stride == "auto" else cast("tuple[int, int]", tuple(stride))
    sy, sx = stride
    if sy < 1 or sx < 1 or sy * sx < 2:
        raise ValueError(f"stride {stride} must be ≥ 1 in each direction with at least 2 tokens per window")
    if layout == "random" and generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    metric = (x if metric is None else metric).detach().float()
    pos_in = grid_positions(grid, x.device)
    group = torch.arange(n_in, device=x.device).expand(b, n_in).clone()
    anchor = group.clone()  # input index of each current token's surviving token
    current = metric
    n, window, first, counts = n_in, (sy, sx), True, []
    while n > tokens:
        keys = None
        if layout == "strided" and generator is not None:
            keys = torch.rand(
                1 if first else b, n, generator=generator, device=generator.device, dtype=torch.float64
            ).to(x.device)
        is_dst = window_destinations(pos_in[anchor], grid, window, partial=not first, keys=keys)
        n_dst = is_dst.sum(1)
        if layout == "random":
            assert generator is not None  # set above for the random layout
            is_dst = _random_subset(n_dst, n, b, generator, shared=first)
        caps = torch.where(n_dst > 0, n - n_dst, torch.zeros_like(n_dst))
        r = min(n - tokens, int(caps.min()))
        if r > 0:
            with torch.no_grad():
                newidx, kept = match_round(current, is_dst, r)
            group = newidx.gather(1, group)
            anchor = anchor[kept].reshape(b, n - r)  # survivors keep their relative order
            n -= r
            counts.append(n)
            if n > tokens:
                current, _ = group_means(metric, group, n)
        window, first = (window[0] * 2, window[1] * 2), False
    merged, sizes = group_means(wide_float(x), group, n)
    positions, _ = group_means(pos_in.expand(b, n_in, 2), group, n)
    return MergeResult(merged.to(x.dtype), sizes, group, positions, anchor, tuple(counts), (sy, sx))
