"""SAM teachers (segment-anything ``ImageEncoderViT``): ViT-H and a tiny one.

Target (notes/radio-code.md §2.5): the image encoder's activations *before the neck*, i.e. the
output of the last block, ``[B, 64, 64, 1280]`` at 1024 for SAM-H. No summary. SAM is a canvas
teacher: its windowed attention and relative-position tables are tied to the 64×64 grid, so it
always runs at 1024 and featurize places smaller images (mosaic tiles, padding) on the canvas.

Inputs follow segment-anything's ``Sam.preprocess``: pixels normalized with ``pixel_mean/std``
(here divided by 255, since teachers take images in [0, 1]) and zero-padded at the bottom/right
to the canvas *after* normalization.

Weights load only from a local file, either the full ``Sam`` state dict (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``; the encoder part is taken) or the encoder's alone.
The neck stays in the model, unused here, so both checkpoints load strictly.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from radio.featurize.teachers.base import Teacher, TeacherError, TeacherOutput, TeacherSpec, check_architecture
from radio.featurize.teachers.loading import is_hub_id, load_file_into
from radio.featurize.teachers.registry import register_teacher

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # segment-anything's Sam defaults, in 0..255
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_MEAN = tuple(v / 255 for v in SAM_PIXEL_MEAN)
SAM_STD = tuple(v / 255 for v in SAM_PIXEL_STD)
ENCODER_PREFIX = "image_encoder."

# ImageEncoderViT kwargs, as segment-anything's build_sam_vit_h passes them
SAM_H_ARGS: dict[str, Any] = dict(
    img_size=1024,
    patch_size=16,
    embed_dim=1280,
    depth=32,
    num_heads=16,
    mlp_ratio=4,
    qkv_bias=True,
    use_rel_pos=True,
    window_size=14,
    global_attn_indexes=(7, 15, 23, 31),
    out_chans=256,
)
# build_sam_vit_b's kwargs: the smallest released SAM (also the CPU benchmark's mosaic teacher)
SAM_B_ARGS: dict[str, Any] = SAM_H_ARGS | dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
# windowed blocks with padding (16 is not a multiple of 6) and one global block, rel-pos on
SAM_TINY_ARGS: dict[str, Any] = dict(
    img_size=256,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=4,
    qkv_bias=True,
    use_rel_pos=True,
    window_size=6,
    global_attn_indexes=(1,),
    out_chans=32,
)


def create_sam_encoder(args: dict[str, Any]) -> ImageEncoderViT:
    """Random-init ``ImageEncoderViT`` on the ambient default device (SAM's LayerNorm eps 1e-6)."""
    return ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **args)


class SamTeacher(Teacher):
    """SAM image encoder (``self.model``) up to its last block.

    ``forward([B, 3, S, S])`` with S the canvas side → summary None, features
    ``[B, S/16, S/16, C]`` = the last block's output (before the neck).
    """

    def __init__(self, spec: TeacherSpec, model: ImageEncoderViT):
        super().__init__()
        if model.img_size != spec.input_size:
            raise TeacherError(f"{spec.name}: encoder canvas {model.img_size} is not the spec's {spec.input_size}")
        check_architecture(
            spec,
            summary_dim=None,
            feature_dim=model.patch_embed.proj.out_channels,
            patch=model.patch_embed.proj.kernel_size[0],
        )
        self.spec = spec
        self.model = model

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        self.input_grid(x)  # canvas size only
        encoder = self.model
        x = encoder.patch_embed(x)  # [B, h, w, C]
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks:
            x = block(x)
        return TeacherOutput(summary=None, features=x)


def build_sam_teacher(spec: TeacherSpec, weights: str | None, *, args: dict[str, Any]) -> SamTeacher:
    if weights is not None and is_hub_id(weights):
        raise TeacherError(f"{spec.name}: SAM loads from a local checkpoint file, not a hub id ({weights})")
    encoder = create_sam_encoder(args)
    if weights is not None:
        load_file_into(encoder, weights, teacher=spec.name, prefix=ENCODER_PREFIX)
    return SamTeacher(spec, encoder)


_SAM_SIZES: tuple[tuple[TeacherSpec, dict[str, Any]], ...] = (
    (
        TeacherSpec(
            name="sam_h",
            family="sam",
            library="segment_anything",
            input_size=1024,
            patch=16,
            mean=SAM_MEAN,
            std=SAM_STD,
            summary_dim=None,
            feature_dim=1280,
            # the official release file (dl.fbaipublicfiles.com/segment_anything/), a local path
            weights="sam_vit_h_4b8939.pth",
            licence="apache-2.0",
            canvas=True,
        ),
        SAM_H_ARGS,
    ),
    (
        TeacherSpec(
            name="sam_b",
            family="sam",
            library="segment_anything",
            input_size=1024,
            patch=16,
            mean=SAM_MEAN,
            std=SAM_STD,
            summary_dim=None,
            feature_dim=768,
            weights="sam_vit_b_01ec64.pth",
            licence="apache-2.0",
            canvas=True,
        ),
        SAM_B_ARGS,
    ),
    (
        TeacherSpec(
            name="sam_tiny",
            family="sam",
            library="segment_anything",
            input_size=256,
            patch=16,
            mean=SAM_MEAN,
            std=SAM_STD,
            summary_dim=None,
            feature_dim=32,
            canvas=True,
        ),
        SAM_TINY_ARGS,
    ),
)

for _spec, _args in _SAM_SIZES:
    register_teacher(_spec, partial(build_sam_teacher, args=_args))
