"""Run a library ViT at any multiple of its patch: token forwards with a resampled position grid.

open_clip's ``VisionTransformer`` and timm's ``VisionTransformer`` add a position embedding
learned for one grid. Featurize runs the same teacher at several sizes (DFN CLIP at 224 and
378), so these forwards resample that embedding to the input grid with timm's
``resample_abs_pos_embed`` (bicubic, antialiased when shrinking). At the model's own grid that
function returns the parameter untouched and the ops below are the libraries' own, in their
order, so the output is bit-identical to the library path there.
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer as OpenClipViT
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """``[1, P + h0*w0, C]`` → ``[1, P + h*w, C]``; the ``P`` prefix (class) rows are kept as they are."""
    return resample_abs_pos_embed(
        pos_embed, new_size=list(grid), old_size=list(old_grid), num_prefix_tokens=num_prefix_tokens
    )


def open_clip_vit_tokens(visual: OpenClipViT, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """open_clip ViT trunk: ``[B, 3, H, W]`` → tokens after the last block ``[B, 1 + h*w, C]``.

    Mirrors ``VisionTransformer._embeds`` + ``transformer``; only the position embedding differs
    off the native grid.
    """
    x = visual.conv1(x)  # [B, C, h, w]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, h*w, C]
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    pos = resample_pos_embed(visual.positional_embedding.unsqueeze(0), grid, visual.grid_size, num_prefix_tokens=1)
    x = x + pos.to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    return visual.transformer(x)


def timm_vit_tokens(trunk: TimmViT, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """timm ViT: ``[B, 3, H, W]`` → normed tokens ``[B, P + h*w, C]`` (P = class + register tokens).

    Mirrors ``forward_features`` (patch embed, ``_pos_embed``, blocks, norm) without the patch
    embed's fixed-size check.
    """
    patch_embed = trunk.patch_embed
    x = patch_embed.proj(x)  # [B, C, h, w]
    x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
    x = patch_embed.norm(x)

    prefix = []
    if trunk.cls_token is not None:
        prefix.append(trunk.cls_token.expand(x.shape[0], -1, -1))
    if trunk.reg_token is not None:
        prefix.append(trunk.reg_token.expand(x.shape[0], -1, -1))
    # no_embed_class (DINOv2 reg, SigLIP): the grid has no rows for prefix tokens, add then concat
    pos_prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
    pos = resample_pos_embed(trunk.pos_embed, grid, patch_embed.grid_size, num_prefix_tokens=pos_prefix)
    if trunk.no_embed_class:
        x = x + pos
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
    else:
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        x = x + pos
    x = trunk.pos_drop(x)

    x = trunk.patch_drop(x)
    x = trunk.norm_pre(x)
    x = trunk.blocks(x)
    return trunk.norm(x)


def to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``[B, h*w, C]`` (row-major) → ``[B, h, w, C]``."""
    return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])
