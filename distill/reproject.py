"""Re-projection: move a feature head exactly into another normalizer's target space.

Every normalizer is affine, ``y = T (x − μ)`` (``phis``: T the PHI-S matrix; ``standardize``:
diagonal 1/σ; ``none``: identity, μ = 0). A feature head ends in a Linear ``y = W h + b`` that
predicts ``y_old = T_old (x − μ_old)``; the same prediction in teacher space, ``x = T_old⁻¹ y_old
+ μ_old``, is expressed in the new space by

    W' = T_new T_old⁻¹ W,        b' = T_new (T_old⁻¹ b + μ_old − μ_new),

so ``T_new⁻¹ (W' h + b') + μ_new = T_old⁻¹ (W h + b) + μ_old`` for every ``h``: the head's
predictions in the teacher's space are unchanged (up to the float32 rounding of the result).
The solve runs in float64. Summary heads are compared by cosine in the teacher's own space and
need no re-projection.
"""

from __future__ import annotations

import torch
from torch import nn

from .spaces import TargetSpace


def reproject_linear(
    weight: torch.Tensor, bias: torch.Tensor, old: TargetSpace, new: TargetSpace
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [C, H]``, ``bias [C]`` of a Linear predicting in ``old`` → the same predictions
    in ``new``: ``(W' [C, H], b' [C])`` in the dtype of ``weight``."""
    w, b = weight.detach().double().cpu(), bias.detach().double().cpu()
    t_old, t_new = old.matrix.double(), new.matrix.double()
    w_x = torch.linalg.solve(t_old, w)  # T_old⁻¹ W: teacher-space weights (a solve, not the stored inverse)
    b_x = torch.linalg.solve(t_old, b.unsqueeze(1)).squeeze(1) + old.mean.double() - new.mean.double()
    return (t_new @ w_x).to(weight.dtype), (t_new @ b_x).to(bias.dtype)


def last_linear(head: nn.Module) -> nn.Linear:
    """The Linear a feature head ends in (:class:`~radio.distill.adaptors.AdaptorMLP`'s ``fc2``)."""
    fc = getattr(head, "fc2", None)
    if not isinstance(fc, nn.Linear) or fc.bias is None:
        raise ValueError(f"{type(head).__name__}: a feature head must end in a Linear with a bias (fc2)")
    return fc


@torch.no_grad()
def reproject_head(head: nn.Module, old: TargetSpace, new: TargetSpace) -> None:
    """Re-project a feature head (its last Linear) in place from ``old`` into ``new``."""
    fc = last_linear(head)
    assert fc.bias is not None  # (checked by last_linear)
    w, b = reproject_linear(fc.weight, fc.bias, old, new)
    fc.weight.copy_(w)
    fc.bias.copy_(b)


def reproject_heads(
    adaptors: nn.ModuleDict, recorded: dict[str, TargetSpace], spaces: dict[str, TargetSpace], source: str
) -> list[dict]:
    """Re-project every feature head in ``adaptors`` whose ``recorded`` space differs from the
    space the loss now uses (``spaces``); returns one record per head moved: ``{"teacher",
    "from", "to", "weights", "why"}`` (plain values: a checkpoint and the run folder carry them)."""
    moved = []
    for teacher, new in sorted(spaces.items()):
        old = recorded.get(teacher)
        if old is None or old.same(new) or teacher not in adaptors:
            continue
        head = adaptors[teacher].features
        assert isinstance(head, nn.Module)  # (a TeacherAdaptor's feature head)
        reproject_head(head, old, new)
        why = "fit-phis ran" if old.mode == new.mode else f"the normalization changed from {old.mode} to {new.mode}"
        moved.append({"teacher": teacher, "from": old.label, "to": new.label, "weights": source, "why": why})
    return moved


def reprojection_note(r: dict) -> str:
    """The one stderr line of a re-projected head."""
    return (
        f"note: {r['teacher']}: head re-projected from normalizer {r['from']} to {r['to']} "
        f"({r.get('why', 'fit-phis ran')} since {r['weights']} was written)"
    )
