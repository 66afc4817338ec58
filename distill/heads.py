"""The adaptor heads in the optimizer: their own weight decay, and the head warm-up.

RADIO trains its adaptor heads with ``head_weight_decay`` (5e-5) while the backbone keeps
``weight_decay``, and gives newly initialised heads a ``head_warmup``: for its first steps only
the heads train, so random heads do not send large gradients into a backbone that already
works (a pretrained student, a teacher added to a later stage). Here:

- :func:`param_groups`: four optimizer groups, ``backbone`` / ``heads`` × decay / no decay
  (biases, norms, and the student's :meth:`~radio.distill.student.Student.no_weight_decay`
  names are not decayed, as timm's default groups);
- :func:`heads_only`: one optimizer step that updates the heads' groups alone. The backbone's
  gradients are dropped before clipping (the heads are clipped by their own norm) and its
  groups are left out of the step, so neither its weights nor its optimizer state (moments,
  step counters) change. Whether a step is a warm-up step depends only on the step number, so
  a resume inside the warm-up is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

HEADS = "adaptors."  # state-dict prefix of every adaptor head's parameters


def is_head(name: str) -> bool:
    return name.startswith(HEADS)


def param_groups(model: nn.Module, weight_decay: float, head_weight_decay: float) -> list[dict]:
    """``model``'s trainable parameters as optimizer groups, each with a ``name`` (``backbone``,
    ``backbone/no_decay``, ``heads``, ``heads/no_decay``) and its ``weight_decay``; empty groups
    are left out."""
    no_decay = set(getattr(model, "no_weight_decay", set)())
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone/no_decay": [], "heads": [], "heads/no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "heads" if is_head(name) else "backbone"
        decayed = p.ndim > 1 and not name.endswith(".bias") and name not in no_decay
        groups[part if decayed else f"{part}/no_decay"].append(p)
    decay = {"backbone": weight_decay, "heads": head_weight_decay}
    return [
        {"name": n, "params": ps, "weight_decay": decay[n] if "/" not in n else 0.0} for n, ps in groups.items() if ps
    ]


def head_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for n, p in model.named_parameters() if is_head(n))


def drop_backbone_grads(model: nn.Module) -> None:
    """Set every non-head parameter's gradient to None (after backward, before clipping)."""
    for name, p in model.named_parameters():
        if not is_head(name):
            p.grad = None


@contextlib.contextmanager
def heads_only(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside: the optimizer sees only its head groups (``optimizer.step()`` touches neither the
    backbone's weights nor its state: LAMB and Adam count steps per group even without gradients)."""
    groups = optimizer.param_groups
    optimizer.param_groups = [g for g in groups if str(g.get("name", "")).startswith("heads")]
    try:
        yield
    finally:
        optimizer.param_groups = groups


def in_warmup(step: int, warmup_steps: int, new_heads: set[str] | frozenset[str]) -> bool:
    """Whether 0-based step ``step`` of a stage trains the heads alone: only in a stage where some
    head is newly initialised, for its first ``warmup_steps`` steps."""
    return bool(new_heads) and step < warmup_steps
