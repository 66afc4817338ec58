"""What every teacher is: a frozen spec and one output type.

A teacher takes images already normalized with its own ``mean``/``std`` (``[B, 3, H, W]``,
H and W multiples of ``patch``) and returns :class:`TeacherOutput`. Featurize never looks
inside a teacher; it only reads the spec (input size, patch, dims) and calls ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from radio.errors import RadioError

Family = str
"""The rules a teacher's outputs follow: ``clip``, ``siglip``, ``dinov2``, ``sam`` (the 2024 set),
``timm``, ``open_clip``, ``hf`` (any model of that library by name, :mod:`.by_name`), or a
plugin's own word. ``radio featurize --teacher FAMILY`` selects by it."""

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class TeacherError(RadioError):
    """A teacher cannot be created: unknown name, missing or unfitting weights, wrong input."""


@dataclass(frozen=True)
class TeacherSpec:
    """Static facts about a registered teacher (timm-style pretrained cfg)."""

    name: str  # registry name, e.g. "dfn_clip_h14_378"
    family: Family
    input_size: int  # native (default run) input side; for a canvas teacher (SAM) the canvas side
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    summary_dim: int | None  # None: the teacher has no summary target (SAM)
    feature_dim: int
    weights: str | None = None  # released weights: hub id, file, or open_clip tag; None for tiny sizes
    canvas: bool = False  # True: fixed-size input; smaller images are placed (mosaic/padding) on it
    library: str = "radio"  # the library whose code runs the model: timm, open_clip, transformers, ...
    licence: str | None = None  # the weights' licence as the model card states it; None: random init only

    def grid(self, resolution: int) -> int:
        """Tokens per side at an input side of ``resolution``."""
        if resolution % self.patch:
            raise ValueError(f"{self.name}: resolution {resolution} is not a multiple of patch {self.patch}")
        return resolution // self.patch


@dataclass
class TeacherOutput:
    """``summary [B, Cs]`` (None for teachers without one) and ``features [B, h, w, C]``."""

    summary: torch.Tensor | None
    features: torch.Tensor


class Teacher(nn.Module):
    """Base class: subclasses set ``spec`` and implement :meth:`forward`."""

    spec: TeacherSpec

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] → the teacher's input normalization."""
        mean = torch.tensor(self.spec.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def input_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input ``[B, 3, H, W]``; refuses a size the teacher cannot run.

        A canvas teacher (SAM) runs only at its canvas side: its windowed attention and
        relative position tables are tied to that grid, so smaller images go *on* the canvas.
        """
        height, width = x.shape[-2:]
        if self.spec.canvas and (height, width) != (self.spec.input_size, self.spec.input_size):
            side = self.spec.input_size
            raise TeacherError(f"{self.spec.name}: input {height}x{width} is not the {side}x{side} canvas")
        if height % self.spec.patch or width % self.spec.patch:
            raise TeacherError(f"{self.spec.name}: input {height}x{width} is not a multiple of patch {self.spec.patch}")
        return height // self.spec.patch, width // self.spec.patch

    def forward(self, x: torch.Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def check_architecture(spec: TeacherSpec, *, summary_dim: int | None, feature_dim: int, patch: int) -> None:
    """Refuse a built model whose dims differ from its spec (e.g. a hub id of another size).

    Featurize sizes the store from the spec alone, so a mismatch must stop here, not in Zarr.
    """
    found = (summary_dim, feature_dim, patch)
    wanted = (spec.summary_dim, spec.feature_dim, spec.patch)
    if found != wanted:
        raise TeacherError(
            f"{spec.name}: built model has (summary_dim, feature_dim, patch) = {found}, the spec says {wanted}"
        )
