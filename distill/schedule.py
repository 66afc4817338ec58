"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr`` (a pure function of step)."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, lr: float, warmup: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate of ``step`` (0-based) in a run of ``total`` steps."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
