"""SigLIP teachers (open_clip with a timm ViT trunk): SO400M/14 run at 378, and a tiny one.

Targets (notes/radio-code.md §2.5): summary = the image embedding, i.e. the trunk's MAP
attention-pool output (``model.encode_image``, 1152-d for SO400M); features = the trunk's normed
patch tokens (``forward_features``), 27×27 at 378. RADIO runs the 384 model at 378: 378 = 27·14
keeps the model's own 27×27 position grid, so no resampling happens there.

open_clip's ``TimmModel`` builds its trunk by timm *name* only, so the tiny size registers a
timm entrypoint (:func:`radio_vit_tiny_patch14_siglip_112`): the SO400M entrypoint with small
dims. The tiny CLIP then comes from the same open_clip config with small towers.
"""

from __future__ import annotations

from functools import partial

import torch
from open_clip.timm_model import TimmModel
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import vit_so400m_patch14_siglip_384
from torch import nn

from radio.featurize.teachers.base import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    TeacherError,
    TeacherOutput,
    TeacherSpec,
    check_architecture,
)
from radio.featurize.teachers.clip import OpenClipArch, OpenClipTeacher, create_open_clip, tokenizer_name
from radio.featurize.teachers.registry import register_teacher
from radio.featurize.teachers.vit import timm_vit_tokens, to_grid

# listed before timm's register_model, which appends its entrypoint to a module's __all__
__all__ = ["SIGLIP_TINY", "TINY_TRUNK_NAME", "SiglipTeacher", "build_siglip_teacher"]

TINY_TRUNK_NAME = "radio_vit_tiny_patch14_siglip_112"
_TINY_TRUNK_ARGS = dict(img_size=112, embed_dim=64, depth=2, num_heads=2)


@register_model
def radio_vit_tiny_patch14_siglip_112(pretrained: bool = False, **kwargs) -> TimmViT:
    """timm entrypoint: the SO400M SigLIP trunk (MAP pooling, no class token) at test size."""
    if pretrained:
        raise TeacherError(f"{TINY_TRUNK_NAME} has no pretrained weights")
    return vit_so400m_patch14_siglip_384(pretrained=False, **dict(kwargs, **_TINY_TRUNK_ARGS))


class SiglipTeacher(OpenClipTeacher):
    """open_clip ``TimmModel`` tower over a timm ViT with MAP (attention-pool) head.

    ``forward([B, 3, H, W])`` → summary ``[B, E]`` = attention-pool output (``encode_image``),
    features ``[B, H/p, W/p, C]`` = the trunk's normed patch tokens.
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module, tokenizer_name: str | None = None):
        super().__init__(spec, model, tokenizer_name)
        visual = model.visual
        trunk = getattr(visual, "trunk", None)
        # the pool's own position table (feat_size) would tie the summary to one grid
        if (
            not isinstance(visual, TimmModel)
            or not isinstance(trunk, TimmViT)
            or trunk.attn_pool is None
            or trunk.attn_pool.pos_embed is not None
            or len(visual.head) > 0
        ):
            raise TeacherError(f"{spec.name}: not an open_clip timm ViT tower with a MAP head and no extra projection")
        summary_dim = trunk.head.out_features if isinstance(trunk.head, nn.Linear) else trunk.attn_pool.out_features
        check_architecture(
            spec, summary_dim=summary_dim, feature_dim=trunk.num_features, patch=trunk.patch_embed.patch_size[0]
        )

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        grid = self.input_grid(x)
        visual = self.model.visual
        tokens = timm_vit_tokens(visual.trunk, x, grid)  # [B, P + h*w, C]
        summary = visual.head(visual.trunk.forward_head(tokens))
        features = to_grid(tokens[:, visual.trunk.num_prefix_tokens :], grid)
        return TeacherOutput(summary=summary, features=features)


def build_siglip_teacher(spec: TeacherSpec, weights: str | None, *, arch: OpenClipArch) -> SiglipTeacher:
    return SiglipTeacher(spec, create_open_clip(arch, spec, weights), tokenizer_name(arch, weights))


SIGLIP_TINY = OpenClipArch(
    "ViT-SO400M-14-SigLIP-384",
    overrides=dict(
        embed_dim=64,  # no projection after the trunk: the image embedding is the trunk width
        vision_cfg=dict(
            image_size=112,
            timm_model_name=TINY_TRUNK_NAME,
            timm_model_pretrained=False,
            timm_pool="map",
            timm_proj="none",
        ),
        text_cfg=dict(
            context_length=64,
            vocab_size=32000,
            width=64,
            heads=2,
            layers=2,
            mlp_ratio=3.7362,
            no_causal_mask=True,
            proj_bias=True,
            pool_type="last",
            norm_kwargs={"eps": 1e-6},
        ),
    ),
)

_SIGLIP_SIZES: tuple[tuple[TeacherSpec, OpenClipArch], ...] = (
    (
        TeacherSpec(
            name="siglip_so400m_378",
            family="siglip",
            library="open_clip",
            input_size=378,
            patch=14,
            mean=SIGLIP_MEAN,
            std=SIGLIP_STD,
            summary_dim=1152,
            feature_dim=1152,
            weights="hf-hub:timm/ViT-SO400M-14-SigLIP-384",
            licence="apache-2.0",
        ),
        OpenClipArch("ViT-SO400M-14-SigLIP-384"),
    ),
    (
        TeacherSpec(
            name="siglip_tiny",
            family="siglip",
            library="open_clip",
            input_size=112,
            patch=14,
            mean=SIGLIP_MEAN,
            std=SIGLIP_STD,
            summary_dim=64,
            feature_dim=64,
        ),
        SIGLIP_TINY,
    ),
)

for _spec, _arch in _SIGLIP_SIZES:
    register_teacher(_spec, partial(build_siglip_teacher, arch=_arch))
