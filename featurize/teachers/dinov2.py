"""DINOv2 teachers (timm ViT with 4 registers): ViT-g/14-reg (LVD-142M) and a tiny one.

Targets (notes/radio-code.md §2.5): summary = the normed class token (``x_norm_clstoken``),
features = the normed patch tokens (``x_norm_patchtokens``); registers are not distilled.
Both come from one timm ``forward_features`` pass.

The timm model keeps its own position grid (37×37, learned at 518); the spec's input size is
the size featurize runs it at by default (378, as RADIO v2.1+), which resamples that grid.
The tiny size is the same timm entrypoint with small dims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from radio.featurize.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Teacher,
    TeacherError,
    TeacherOutput,
    TeacherSpec,
    check_architecture,
)
from radio.featurize.teachers.loading import is_hub_id, load_file_into
from radio.featurize.teachers.registry import register_teacher
from radio.featurize.teachers.vit import timm_vit_tokens, to_grid


@dataclass(frozen=True)
class TimmArch:
    """A timm architecture: a model name (``arch`` or ``arch.tag``) and the kwargs a size replaces."""

    model_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self) -> nn.Module:
        """Random-init model on the ambient default device (timm builds on it; no download)."""
        return timm.create_model(self.model_name, pretrained=False, **self.kwargs)


def create_timm(arch: TimmArch, spec: TeacherSpec, weights: str | None) -> nn.Module:
    """The timm model for ``weights`` (see :mod:`radio.featurize.teachers.loading`)."""
    if weights is None:
        return arch.create()
    if is_hub_id(weights):
        return timm.create_model(weights, pretrained=True)  # the hub repo's own config and weights
    model = arch.create()
    load_file_into(model, weights, teacher=spec.name)
    return model


class Dinov2Teacher(Teacher):
    """timm ViT with a class token and registers (``self.model``).

    ``forward([B, 3, H, W])`` → summary ``[B, C]`` = normed class token, features
    ``[B, H/p, W/p, C]`` = normed patch tokens (registers dropped).
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module):
        super().__init__()
        if not isinstance(model, TimmViT) or model.cls_token is None or model.pos_embed is None:
            raise TeacherError(f"{spec.name}: not a timm ViT with a class token and a position embedding")
        check_architecture(
            spec, summary_dim=model.num_features, feature_dim=model.num_features, patch=model.patch_embed.patch_size[0]
        )
        self.spec = spec
        self.model = model

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        grid = self.input_grid(x)
        tokens = timm_vit_tokens(self.model, x, grid)  # [B, 1 + registers + h*w, C]
        features = to_grid(tokens[:, self.model.num_prefix_tokens :], grid)
        return TeacherOutput(summary=tokens[:, 0], features=features)


def build_dinov2_teacher(spec: TeacherSpec, weights: str | None, *, arch: TimmArch) -> Dinov2Teacher:
    return Dinov2Teacher(spec, create_timm(arch, spec, weights))


# SwiGLUPacked splits its hidden layer in two: embed_dim * 5.33334 must round to an even width
DINOV2_TINY = TimmArch("vit_giant_patch14_reg4_dinov2", kwargs=dict(img_size=112, embed_dim=48, depth=2, num_heads=2))

_DINOV2_SIZES: tuple[tuple[TeacherSpec, TimmArch], ...] = (
    (
        TeacherSpec(
            name="dinov2_g_reg",
            family="dinov2",
            library="timm",
            input_size=378,
            patch=14,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            summary_dim=1536,
            feature_dim=1536,
            weights="hf-hub:timm/vit_giant_patch14_reg4_dinov2.lvd142m",
            licence="apache-2.0",
        ),
        TimmArch("vit_giant_patch14_reg4_dinov2.lvd142m"),
    ),
    (
        TeacherSpec(
            name="dinov2_b_reg",
            family="dinov2",
            library="timm",
            input_size=224,
            patch=14,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            summary_dim=768,
            feature_dim=768,
            weights="hf-hub:timm/vit_base_patch14_reg4_dinov2.lvd142m",
            licence="apache-2.0",
        ),
        TimmArch("vit_base_patch14_reg4_dinov2.lvd142m"),
    ),
    (
        TeacherSpec(
            name="dinov2_tiny",
            family="dinov2",
            library="timm",
            input_size=112,
            patch=14,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            summary_dim=48,
            feature_dim=48,
        ),
        DINOV2_TINY,
    ),
)

for _spec, _arch in _DINOV2_SIZES:
    register_teacher(_spec, partial(build_dinov2_teacher, arch=_arch))
