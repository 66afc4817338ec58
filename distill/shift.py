"""The shift-equivariant loss on a cache (C-RADIOv4, issue 26): per-row offsets, windows, clamps.

C-RADIOv4 shifts the student's and each teacher's input by independent whole-patch offsets
``patch × round(N(0, σ))`` and takes the loss on the overlap, so a teacher's fixed-pattern
artifacts (tied to absolute token positions) move relative to the student every visit and cannot
be imitated. A cache fixes the teacher's input per crop, so here featurize stores each key's grid
over the crop extended by ``m`` teacher patches per side (``(g + 2m)²`` tokens,
``featurize.shift_margin``), and phase 2 moves only the student:

- offset ``k = (ky, kx)`` in student patches per row: a pure function of
  (seed, stage, partition, step, row) (:func:`draw_offsets`), clamped to ``±limit``;
- the student sees its view of the crop extended by ``limit`` student patches
  (:func:`radio.shards.crops.margin_view`, ``pad = limit · 16`` px), windowed at
  ``(limit + k) · 16`` px: the crop moved by ``k / G`` of its side (``G = R / 16``);
- each key's target is its cached grid windowed at ``margin + k · g / G`` tokens: an exact slice
  when the grids align (``g = G``: SAM's mosaic blocks, DINO at the student's grid); for a key
  on another grid (CLIP-like, resized to the student anyway) a fractional start, read by linear
  interpolation between the two neighbouring slices (bilinear sampling at the shifted token
  centres).

``limit`` per partition is the largest ``k`` every key's margin covers:
``min_keys ⌊m · G / g⌋``. Relative to the student, the teacher's offset is still random each
visit (the teacher's own one is fixed per crop; ``crops_per_image > 1`` adds more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from radio.errors import RadioError

from .counters import splitmix64, unit_uniform
from .loss import KeyTarget, keys_at

STUDENT_PATCH = 16
_SALT = 26  # separates these draws from the flips' and crops' streams of the same step


class ShiftError(RadioError):
    """A shift the store's margins cannot serve (or one the config asks for without a margin)."""


@dataclass(frozen=True)
class ShiftPlan:
    """One partition's shift: ``limit`` student patches at most per axis (0: the centre window
    only, for a store with margins trained or evaluated without shift)."""

    resolution: int
    sigma: float
    limit: int
    margins: dict[str, tuple[int, int]]  # key → (margin m, core grid g) of every key with a margin

    @property
    def pad(self) -> int:
        """Pixels per side the student's view is extended by."""
        return self.limit * STUDENT_PATCH

    @property
    def grid(self) -> int:
        """The student's grid ``G`` at the partition resolution."""
        return self.resolution // STUDENT_PATCH

    def start(self, key: str, k: np.ndarray) -> np.ndarray:
        """Token start of ``key``'s window for student offsets ``k`` (any shape): ``m + k·g/G``."""
        m, g = self.margins[key]
        return m + np.asarray(k, np.float64) * g / self.grid


def shift_plan(
    resolution: int,
    targets: Sequence[KeyTarget],
    enabled: bool,
    sigma: float,
    compact: Iterable[str] = (),
    unshifted: bool = False,
) -> ShiftPlan | None:
    """The plan of one partition, or None when no key has a margin and shift is off (today's path).

    Raises :class:`ShiftError` when shift is on and some key has no margin (nothing to shift
    into), a margin covers less than one student patch (unless ``unshifted``: then the plan has
    limit 0, the centre windows), or a compact key (one-byte codes) would need an interpolated
    window."""
    margins = {t.key: (t.margin, t.grid[0]) for t in targets if t.margin}
    if not enabled:
        return ShiftPlan(resolution, sigma, 0, margins) if margins else None
    bare = [t.key for t in targets if not t.margin]
    if bare:
        raise ShiftError(
            f"shift at {resolution} px: {', '.join(bare)} cached no margin (featurized with "
            "featurize.shift_margin 0); featurize them again with a margin, or turn stages[].shift off"
        )
    grid = resolution // STUDENT_PATCH
    limit = min(m * grid // g for m, g in margins.values())
    if limit == 0 and unshifted:
        return ShiftPlan(resolution, sigma, 0, margins)
    if limit == 0:
        raise ShiftError(
            f"shift at {resolution} px: a margin of {min(m for m, _ in margins.values())} teacher patches is "
            f"less than one student patch of the {grid}x{grid} grid; raise featurize.shift_margin"
        )
    odd = sorted(k for k in set(compact) & set(margins) if margins[k][1] != grid)
    if odd:
        raise ShiftError(
            f"shift at {resolution} px: compact keys {', '.join(odd)} are on another grid than the student's "
            f"{grid}x{grid}, so their windows would be interpolated, which one-byte codes cannot be; "
            "train on their raw targets"
        )
    return ShiftPlan(resolution, sigma, limit, margins)


def size_plans(
    sizes: Sequence[int], targets: Sequence[KeyTarget], enabled: bool, sigma: float, compact: Iterable[str] = ()
) -> dict[int, ShiftPlan | None]:
    """``{size: plan}`` for each input size of a partition, each over the keys that train at that
    size. A stochastic partition's small sizes may have a student patch wider than a teacher
    margin covers: those train unshifted (limit 0), as long as one size shifts."""
    if len(sizes) == 1:
        return {sizes[0]: shift_plan(sizes[0], targets, enabled, sigma, compact)}
    plans = {s: shift_plan(s, keys_at(targets, s), enabled, sigma, compact, unshifted=True) for s in sizes}
    if enabled and not any(p is not None and p.limit for p in plans.values()):
        top = max(sizes)
        shift_plan(top, keys_at(targets, top), enabled, sigma, compact)  # raises: why the largest cannot shift
    return plans


def by_size(shift: ShiftPlan | Mapping[int, ShiftPlan | None] | None) -> dict[int, ShiftPlan | None]:
    """``{size: plan}`` from one plan (a fixed partition), a partition's :func:`size_plans`, or None."""
    if shift is None:
        return {}
    return {shift.resolution: shift} if isinstance(shift, ShiftPlan) else dict(shift)


def unshifted_sizes(plans: dict[int, ShiftPlan | None]) -> list[int]:
    """The sizes of an enabled shift whose plan cannot move the view (their margin < one student patch)."""
    return sorted(s for s, p in plans.items() if p is not None and p.limit == 0)


def draw_offsets(
    seed: int, partition: int, step: int, rows: np.ndarray, sigma: float, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[B, 2]`` (ky, kx) student-patch offsets ``round(N(0, σ))`` clamped to ``±limit``, and
    ``[B, 2]`` which draws were clamped. Row ``r``'s offset depends only on (seed, partition,
    step, r): the same on every rank, in any batch order, after any resume (``seed`` is the
    stage's, ``cfg.seed · 1000 + stage``, as the batches')."""
    base = np.random.SeedSequence([seed, partition, step, _SALT]).generate_state(1, np.uint64)[0]
    r = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = splitmix64(r ^ base)
        hs = [splitmix64(h + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)) for i in range(1, 5)]
    # Box–Muller, one normal per axis from two uniforms each.
    z = np.stack(
        [
            np.sqrt(-2 * np.log(unit_uniform(hs[2 * a]))) * np.cos(2 * np.pi * unit_uniform(hs[2 * a + 1]))
            for a in (0, 1)
        ],
        axis=-1,
    )
    k = np.rint(sigma * z).astype(np.int64)
    clamped = np.abs(k) > limit
    return np.clip(k, -limit, limit), clamped


def window_grid(features: torch.Tensor, ty: float, tx: float, size: int) -> torch.Tensor:
    """``features [H, W, C]`` → the ``[size, size, C]`` window starting at token ``(ty, tx)``.

    Integer starts are a slice (any dtype); a fractional start is the linear interpolation of
    the two neighbouring slices per axis, in float32: bilinear samples at the shifted centres."""

    def axis(x: torch.Tensor, t: float, dim: int) -> torch.Tensor:
        lo = int(np.floor(t + 1e-9))
        f = t - lo
        a = x.narrow(dim, lo, size)
        if f < 1e-9:
            return a
        b = x.narrow(dim, lo + 1, size)
        return a.float() * (1 - f) + b.float() * f

    return axis(axis(features, ty, 0), tx, 1)


def apply_windows(
    images: torch.Tensor, targets: dict[str, dict[str, torch.Tensor]], offsets: np.ndarray, plan: ShiftPlan
) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    """The student's and the targets' windows of a batch at ``offsets [B, 2]`` (after flips: the
    view and the grid are flipped whole, and the margins are symmetric, so one offset names the
    same pixels in both).

    ``images [B, 3, R + 2·pad, R + 2·pad]`` → ``[B, 3, R, R]``; each key with a margin
    ``features [B, g + 2m, g + 2m, C]`` → ``[B, g, g, C]`` (float32 where interpolated)."""
    r, pad, p = plan.resolution, plan.pad, STUDENT_PATCH
    if pad:
        views = [
            images[i, :, pad + int(ky) * p : pad + int(ky) * p + r, pad + int(kx) * p : pad + int(kx) * p + r]
            for i, (ky, kx) in enumerate(offsets)
        ]
        images = torch.stack(views)
    out = dict(targets)
    for key, (_, g) in plan.margins.items():
        if key not in targets:
            continue
        ty, tx = plan.start(key, offsets[:, 0]), plan.start(key, offsets[:, 1])
        f = targets[key]["features"]
        wins = [window_grid(f[i], float(ty[i]), float(tx[i]), g) for i in range(len(f))]
        dtype = torch.float32 if any(w.dtype != f.dtype for w in wins) else f.dtype
        out[key] = dict(targets[key]) | {"features": torch.stack([w.to(dtype) for w in wins])}
    return images, out


def clamp_record(
    plans: Sequence[ShiftPlan | None], seed: int, step: int, batches: Sequence[Callable[[int], np.ndarray]]
) -> dict:
    """The step's metrics: ``shift_clamped`` (share of the global batch's axis draws that hit
    the margin) and ``shift_clamped_draws`` (their count), over partitions with a shift; ``{}``
    without one. ``batches[p](step)``: partition ``p``'s global batch rows (every rank's)."""
    n = clamped = 0
    for p, (plan, batch) in enumerate(zip(plans, batches)):
        if plan is None or plan.limit == 0:
            continue
        _, c = draw_offsets(seed, p, step, batch(step), plan.sigma, plan.limit)
        n, clamped = n + c.size, clamped + int(c.sum())
    return {"shift_clamped": clamped / n if n else 0.0, "shift_clamped_draws": clamped} if n else {}


__all__ = [
    "ShiftError",
    "ShiftPlan",
    "apply_windows",
    "by_size",
    "clamp_record",
    "draw_offsets",
    "shift_plan",
    "size_plans",
    "unshifted_sizes",
    "window_grid",
]
