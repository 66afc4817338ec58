"""Any open_clip ViT by name (``model: open_clip:ViT-gopt-16-SigLIP2-384``), and SigLIP2.

``model: open_clip:local-dir:FOLDER`` takes a folder with an ``open_clip_config.json`` (open_clip's
own schema; its ``preprocess_cfg`` gives the normalization). ``weights:`` is an open_clip pretrained tag of the architecture (``webli``), a hub id or a local
file (:func:`radio.featurize.teachers.clip.create_open_clip`). The rules, by image tower:

* open_clip ``VisionTransformer`` (CLIP, class-token pooling): :class:`ClipTeacher`, summary =
  ``encode_image`` (``ln_post(cls) @ proj``), features = the ``ln_post`` patch tokens;
* ``TimmModel`` over a timm ViT with a MAP head (SigLIP, SigLIP2): :class:`SiglipTeacher`,
  summary = ``encode_image`` (the attention-pool output), features = the trunk's normed patch
  tokens after its ``num_prefix_tokens``;
* anything else (attentional pooler, avg pooling, a projection after the pool, a CNN): a one-line
  error naming what does not fit.

Patch size and native resolution come from the tower; normalization from the pretrained
config of the tag (``weights:``, else the architecture's first tag), which is where open_clip
keeps it (a random-init tower carries OpenAI's defaults).

SigLIP2 at 384, the C-RADIOv4 summary teacher, is registered at its two sizes: ``siglip2_g_384``
(``ViT-gopt-16-SigLIP2-384``, 24×24 at 384) and ``siglip2_so400m_384``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer as OpenClipViT
from torch import nn

from radio.featurize.teachers.base import TeacherError, TeacherSpec
from radio.featurize.teachers.clip import ClipTeacher, OpenClipArch, OpenClipTeacher, create_open_clip, tokenizer_name
from radio.featurize.teachers.registry import TeacherBuilder, register_resolver, register_teacher
from radio.featurize.teachers.siglip import SiglipTeacher

LIBRARY = "open_clip"
LOCAL_DIR = "local-dir:"  # open_clip's schema for a folder holding open_clip_config.json (+ weights)


def _teacher_class(name: str, visual: nn.Module) -> type[OpenClipTeacher]:
    if isinstance(visual, OpenClipViT):
        return ClipTeacher
    if isinstance(visual, TimmModel):
        return SiglipTeacher
    raise TeacherError(
        f"{name}: cannot map outputs: image tower {type(visual).__name__} is neither an open_clip ViT nor a timm ViT"
    )


def _dims(name: str, visual: Any) -> tuple[int | None, int, int]:
    """``(summary_dim, feature_dim, patch)`` as the teacher classes read them."""
    if isinstance(visual, OpenClipViT):
        if visual.proj is None:
            raise TeacherError(f"{name}: cannot map outputs: visual.proj is None (no image embedding projection)")
        return int(visual.proj.shape[1]), int(visual.ln_post.normalized_shape[0]), int(visual.patch_size[0])
    trunk = getattr(visual, "trunk", None)
    attn_pool = getattr(trunk, "attn_pool", None)
    if trunk is None or attn_pool is None:
        raise TeacherError(f"{name}: cannot map outputs: visual.trunk.attn_pool is missing (no MAP head)")
    head = trunk.head
    summary_dim = head.out_features if isinstance(head, nn.Linear) else attn_pool.out_features
    return int(summary_dim), int(trunk.num_features), int(trunk.patch_embed.patch_size[0])


def _side(size: Any) -> int:
    return int(size[-1] if isinstance(size, tuple | list) else size)


def _local_dir_config(name: str, model_name: str) -> dict[str, Any] | None:
    """``local-dir:FOLDER`` (open_clip's own schema): its ``open_clip_config.json``, else None."""
    if not model_name.startswith(LOCAL_DIR):
        return None
    path = Path(model_name.removeprefix(LOCAL_DIR)) / "open_clip_config.json"
    if not path.is_file():
        raise TeacherError(f"unknown teacher {name!r}: no open_clip_config.json in {path.parent}")
    return json.loads(path.read_text())


def describe(name: str, arch: OpenClipArch, weights: str | None = None, **spec_fields: Any) -> TeacherSpec:
    """The spec of ``arch`` read off its meta-device instance (see the module's rules)."""
    folder_config = _local_dir_config(name, arch.model_name)
    if folder_config is None and open_clip.get_model_config(arch.model_name) is None:
        raise TeacherError(f"unknown teacher {name!r}: open_clip has no model config {arch.model_name!r}")
    with torch.device("meta"):
        model: Any = arch.create()
    visual = model.visual
    teacher_class = _teacher_class(name, visual)
    summary_dim, feature_dim, patch = _dims(name, visual)
    tags = [] if folder_config is not None else open_clip.list_pretrained_tags_by_model(arch.model_name)
    tag = weights if weights in tags else (tags[0] if tags else None)
    pretrained = open_clip.get_pretrained_cfg(arch.model_name, tag) if tag else {}
    if folder_config is not None:
        pretrained = folder_config.get("preprocess_cfg", {})
    preprocess = getattr(visual, "preprocess_cfg", {}) or {}
    fields: dict[str, Any] = dict(
        name=name,
        family="clip" if teacher_class is ClipTeacher else "siglip",
        input_size=_side(visual.image_size),
        patch=patch,
        mean=tuple(float(v) for v in pretrained.get("mean", preprocess.get("mean", (0.5, 0.5, 0.5)))),
        std=tuple(float(v) for v in pretrained.get("std", preprocess.get("std", (0.5, 0.5, 0.5)))),
        summary_dim=summary_dim,
        feature_dim=feature_dim,
        weights=tag,
        library=LIBRARY,
    )
    return TeacherSpec(**(fields | spec_fields))


def build_open_clip_teacher(spec: TeacherSpec, weights: str | None, *, arch: OpenClipArch) -> OpenClipTeacher:
    model: Any = create_open_clip(arch, spec, weights)
    return _teacher_class(spec.name, model.visual)(spec, model, tokenizer_name(arch, weights))


def resolve(name: str, model_name: str) -> tuple[TeacherSpec, TeacherBuilder]:
    """``open_clip:MODEL`` → (spec, builder)."""
    arch = OpenClipArch(model_name)
    spec = describe(name, arch)
    # build once on meta so a tower these rules cannot map fails here, in one line
    with torch.device("meta"):
        build_open_clip_teacher(spec, None, arch=arch)
    return spec, partial(build_open_clip_teacher, arch=arch)


register_resolver(LIBRARY, resolve)

# SigLIP2 at 384 (written out; a test checks them against describe()). Licence: the model card
# of google/siglip2-*, Apache 2.0.
SIGLIP2_ARCHS = {
    "siglip2_g_384": OpenClipArch("ViT-gopt-16-SigLIP2-384"),
    "siglip2_so400m_384": OpenClipArch("ViT-SO400M-16-SigLIP2-384"),
}
_SIGLIP2_DIMS = {"siglip2_g_384": 1536, "siglip2_so400m_384": 1152}
for _name, _arch in SIGLIP2_ARCHS.items():
    _spec = TeacherSpec(
        name=_name,
        family="siglip2",
        input_size=384,
        patch=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        summary_dim=_SIGLIP2_DIMS[_name],
        feature_dim=_SIGLIP2_DIMS[_name],
        weights="webli",
        library=LIBRARY,
        licence="apache-2.0",
    )
    register_teacher(_spec, partial(build_open_clip_teacher, arch=_arch))
