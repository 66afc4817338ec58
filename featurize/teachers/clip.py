"""CLIP teachers (open_clip ViT towers): DFN5B CLIP H/14@378, OpenAI CLIP L/14@336, a tiny one.

Targets (notes/radio-code.md §2.5): summary = the projected image embedding, exactly
``model.encode_image`` (not L2-normalized); features = the patch tokens after ``ln_post``
(``output_tokens`` in open_clip). The whole CLIP model is kept, text tower included, because
zero-shot evaluation uses ``encode_text``.

Sizes are data: an open_clip built-in config name plus config overrides. The tiny size is the
DFN config with small towers, built by the same ``open_clip.create_model`` and wrapped by the
same :class:`ClipTeacher`.
"""

from __future__ import annotations

import contextlib
import logging
from copy import deepcopy
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import open_clip
import torch
from open_clip.transformer import VisionTransformer as OpenClipViT
from torch import nn

from radio.featurize.teachers.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Teacher,
    TeacherError,
    TeacherOutput,
    TeacherSpec,
    check_architecture,
)
from radio.featurize.teachers.loading import is_hub_id, load_file_into
from radio.featurize.teachers.registry import register_teacher
from radio.featurize.teachers.vit import open_clip_vit_tokens, to_grid


@dataclass(frozen=True)
class OpenClipArch:
    """An open_clip architecture: a built-in config name and the config keys a size replaces."""

    model_name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def create(self, **kwargs: Any) -> nn.Module:
        """``open_clip.create_model`` on the ambient default device (meta under ``torch.device``)."""
        # open_clip warns "No pretrained weights loaded for model <config name>" on every random
        # init, naming the base config even for tiny overrides; here random init is intended.
        with _quiet_open_clip(not kwargs.get("pretrained")):
            return open_clip.create_model(
                self.model_name, device=torch.get_default_device(), **deepcopy(self.overrides), **kwargs
            )


@contextlib.contextmanager
def _quiet_open_clip(quiet: bool):
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def create_open_clip(arch: OpenClipArch, spec: TeacherSpec, weights: str | None) -> nn.Module:
    """The open_clip model for ``weights`` (see :mod:`radio.featurize.teachers.loading`).

    Besides hub ids and files, an open_clip pretrained tag of the architecture (``"openai"``) is
    accepted: the OpenAI weights are published as a tag, not as an open_clip hub repo.
    """
    if weights is None:
        return arch.create()
    if is_hub_id(weights):
        return open_clip.create_model(weights)  # the hub repo's own config and weights
    if weights in open_clip.list_pretrained_tags_by_model(arch.model_name):
        return arch.create(pretrained=weights)
    model = arch.create()
    load_file_into(model, weights, teacher=spec.name)
    return model


class OpenClipTeacher(Teacher):
    """A teacher that holds a whole open_clip model (``self.model``) and exposes its text tower."""

    def __init__(self, spec: TeacherSpec, model: nn.Module, tokenizer_name: str | None = None):
        super().__init__()
        self.spec = spec
        self.model = model
        # open_clip names tokenizers like models: a hub id's own, else the architecture's config
        self.tokenizer_name = tokenizer_name

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids ``[B, L]`` → text embeddings ``[B, E]`` (zero-shot classifier rows)."""
        return self.model.encode_text(text, normalize=normalize)

    def tokenizer(self):
        """open_clip's tokenizer for this text tower: ``tokenizer(list[str]) → [B, L]`` token ids."""
        if self.tokenizer_name is None:
            raise TeacherError(f"{self.spec.name}: no tokenizer is known for this text tower")
        return open_clip.get_tokenizer(self.tokenizer_name)


class ClipTeacher(OpenClipTeacher):
    """open_clip ViT image tower with a class token.

    ``forward([B, 3, H, W])`` → summary ``[B, E]`` = ``ln_post(cls) @ proj`` (``encode_image``),
    features ``[B, H/p, W/p, C]`` = ``ln_post`` patch tokens.
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module, tokenizer_name: str | None = None):
        super().__init__(spec, model, tokenizer_name)
        visual = model.visual
        # the summary/feature split below is open_clip's class-token pooling; other poolings
        # (attentional pooler, avg, LN after pool) would need their own targets
        if (
            not isinstance(visual, OpenClipViT)
            or visual.attn_pool is not None
            or visual.pool_type != "tok"
            or visual.final_ln_after_pool
            or visual.proj is None
        ):
            raise TeacherError(f"{spec.name}: not an open_clip ViT tower with class-token pooling and a projection")
        check_architecture(
            spec,
            summary_dim=visual.proj.shape[1],
            feature_dim=visual.ln_post.normalized_shape[0],
            patch=visual.patch_size[0],
        )

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        grid = self.input_grid(x)
        visual = self.model.visual
        tokens = visual.ln_post(open_clip_vit_tokens(visual, x, grid))  # [B, 1 + h*w, C]
        summary = tokens[:, 0] @ visual.proj
        return TeacherOutput(summary=summary, features=to_grid(tokens[:, 1:], grid))


def tokenizer_name(arch: OpenClipArch, weights: str | None) -> str:
    return weights if weights is not None and is_hub_id(weights) else arch.model_name


def build_clip_teacher(spec: TeacherSpec, weights: str | None, *, arch: OpenClipArch) -> ClipTeacher:
    return ClipTeacher(spec, create_open_clip(arch, spec, weights), tokenizer_name(arch, weights))


CLIP_TINY = OpenClipArch(
    "ViT-H-14-378-quickgelu",
    overrides=dict(
        embed_dim=32,
        vision_cfg=dict(image_size=112, layers=2, width=64, head_width=32, patch_size=14),
        # full vocabulary and context so the real open_clip tokenizer works for zero-shot tests
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    ),
)

_CLIP_SIZES: tuple[tuple[TeacherSpec, OpenClipArch], ...] = (
    (
        TeacherSpec(
            name="dfn_clip_h14_378",
            family="clip",
            library="open_clip",
            input_size=378,
            patch=14,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            summary_dim=1024,
            feature_dim=1280,
            weights="hf-hub:apple/DFN5B-CLIP-ViT-H-14-378",
            licence="apple-sample-code-license",
        ),
        OpenClipArch("ViT-H-14-378-quickgelu"),
    ),
    (
        # OpenAI's CLIP was trained with QuickGELU: the plain ViT-L-14-336 config would load
        # the "openai" weights into the wrong activation
        TeacherSpec(
            name="openai_clip_l14_336",
            family="clip",
            library="open_clip",
            input_size=336,
            patch=14,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            summary_dim=768,
            feature_dim=1024,
            weights="openai",
            licence="mit",
        ),
        OpenClipArch("ViT-L-14-336-quickgelu"),
    ),
    (
        TeacherSpec(
            name="clip_tiny",
            family="clip",
            library="open_clip",
            input_size=112,
            patch=14,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            summary_dim=32,
            feature_dim=64,
        ),
        CLIP_TINY,
    ),
)

for _spec, _arch in _CLIP_SIZES:
    register_teacher(_spec, partial(build_clip_teacher, arch=_arch))
