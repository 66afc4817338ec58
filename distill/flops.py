"""FLOPs of the student: what model FLOPs utilisation (MFU) and node-feed planning divide by.

Counted from the architecture (:data:`~radio.distill.student.STUDENT_SIZES`), multiply-adds as 2
FLOPs, matmuls only (norms, softmax and GELU are < 1 %). Per image at ``r`` px with
``N = (r/16)² + P`` tokens (``P`` CLS + registers), per block of width ``D`` and MLP width ``M``:

- projections ``2·N·(4·D² + 2·D·M)`` (qkv, out, fc1, fc2);
- attention ``4·N²·D`` (``QKᵀ`` and ``A·V``);

plus the patch embedding ``2·(r/16)²·(3·16²)·D``. Backward costs twice the forward (gradients of
inputs and of weights) less the patch embedding's input gradient, so a training step is ≈ 3× the
forward; activation checkpointing adds one more forward (≈ 4×). ``torch.utils.flop_counter``
agrees exactly (tests/distill/test_no_stalls.py). Adaptor heads are left out (one MLP per teacher: a few % of a ViT-B).
"""

from __future__ import annotations

from .student import StudentSpec, student_spec


def student_flops(
    size: str | StudentSpec,
    resolution: int,
    *,
    batch: int = 1,
    prefix_tokens: int = 8,
    backward: bool = True,
    recompute: bool = False,
) -> float:
    """FLOPs of the student ``size`` on ``batch`` images of ``resolution``² px: forward only, or
    (``backward``) a training step's forward + backward, plus one forward when ``recompute``
    (activation checkpointing)."""
    spec = student_spec(size)
    patches = (resolution // spec.patch) ** 2
    n, d = patches + prefix_tokens, spec.dim
    m = int(d * spec.mlp_ratio)
    block = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
    embed = 2 * patches * 3 * spec.patch**2 * d
    forward = spec.depth * block + embed
    if not backward:
        return float(batch * forward)
    # backward: the input and weight gradients (2x), less the pixels' gradient (none is needed)
    return float(batch * (forward * (4 if recompute else 3) - embed))
