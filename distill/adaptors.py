"""Per-teacher adaptor heads: map the student's tokens into one teacher's feature space.

Each teacher gets its own pair of heads (AM-RADIO sec. 3: "a 2-layer MLP with a LayerNorm and
a GeLU in between"):

- a *summary* head on that teacher's own CLS token, ``[B, D] → [B, Cs]``; teachers without a
  summary target (SAM) have none;
- a *feature* head applied token-wise to the patch tokens, ``[B, h, w, D] → [B, h, w, C]``.

An adaptor belongs to a teacher, not to a target key: ``dfn_clip@224`` and ``dfn_clip@378``
both train the ``dfn_clip`` heads. RADIO v2.5's released heads add one residual inner block
(``MLP2``, ``num_inner=1``): ``student.adaptor_inner`` (0 = the plain 2-layer form the paper
describes; the ``radio-amp-*`` pipelines use 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdaptorSpec:
    """One teacher's heads: its config name (``"dfn_clip"``), summary width (None: no summary
    target, e.g. SAM) and patch-feature width."""

    name: str
    summary_dim: int | None
    feature_dim: int

    def __post_init__(self) -> None:
        # The name becomes a module key (state-dict prefix ``adaptors.<name>.``): no dots.
        if not self.name or "." in self.name:
            raise ValueError(f"adaptor name {self.name!r} must be non-empty and contain no '.'")
        if self.feature_dim < 1 or (self.summary_dim is not None and self.summary_dim < 1):
            raise ValueError(f"adaptor {self.name!r}: dims must be positive, got {self}")


@dataclass
class AdaptorOutput:
    """One teacher's predictions: ``summary [B, Cs]`` (None without a summary head) and
    ``features [B, h, w, C]``."""

    summary: torch.Tensor | None
    features: torch.Tensor


class InnerBlock(nn.Module):
    """RADIO's MLP2 inner residual block: ``x + Linear(GELU(LayerNorm(x)))``, ``[..., H] → [..., H]``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.fc = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.act(self.norm(x)))


class AdaptorMLP(nn.Sequential):
    """``Linear(D → hidden) → [InnerBlock] × inner → LayerNorm → GELU → Linear(hidden → C)`` on
    the last dim: ``[..., D] → [..., C]``. ``inner = 0`` is the paper's 2-layer MLP; RADIO v2.5's
    released heads (``MLP2``, ``num_inner=1``) have one inner block."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, inner: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        if inner:  # absent at 0, so 2-layer heads keep their state-dict names
            self.inner = nn.Sequential(*(InnerBlock(hidden) for _ in range(inner)))
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)


class TeacherAdaptor(nn.Module):
    """Summary and feature heads of one teacher (:class:`AdaptorSpec`)."""

    def __init__(self, spec: AdaptorSpec, dim: int, hidden: int, inner: int = 0):
        super().__init__()
        self.spec = spec
        self.summary = AdaptorMLP(dim, hidden, spec.summary_dim, inner) if spec.summary_dim is not None else None
        self.features = AdaptorMLP(dim, hidden, spec.feature_dim, inner)

    def forward(self, cls_token: torch.Tensor | None, patches: torch.Tensor) -> AdaptorOutput:
        """``cls_token [B, D]`` (this teacher's own CLS; None without a summary head),
        ``patches [B, h, w, D]`` → :class:`AdaptorOutput`."""
        summary = None
        if self.summary is not None:
            if cls_token is None:
                raise ValueError(f"adaptor {self.spec.name!r} has a summary head but got no CLS token")
            summary = self.summary(cls_token)
        return AdaptorOutput(summary, self.features(patches))
