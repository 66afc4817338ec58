"""Any timm ViT by name (``model: timm:vit_large_patch16_dinov3``), and the DINOv3 teachers.

The rules, read off the model timm builds (on the meta device for the spec):

* summary: ``forward_head(forward_features(x), pre_logits=True)``, the image embedding as timm
  defines it for the model's ``global_pool`` (class token, ``avg`` of the patch tokens, or the
  ``map`` attention pool);
* features: ``forward_features(x)`` without its first ``num_prefix_tokens`` tokens (class token
  and registers), as an ``h × w`` grid;
* patch: ``patch_embed.patch_size``; native resolution: ``pretrained_cfg["input_size"]``;
  normalization: ``pretrained_cfg["mean"/"std"]``; licence: ``pretrained_cfg["license"]``.

Every model is built with ``dynamic_img_size=True`` so featurize can run it at any multiple of
its patch (timm resamples an absolute position table, or recomputes RoPE, itself).

DINOv3 (timm 1.0.31's ``vit_*_patch16_dinov3``, Eva with RoPE and 4 registers) is registered at
the four sizes C-RADIOv4 and its peers use, with ``global_pool="token"``: the summary is the
normed class token as upstream DINOv3 defines it (timm's own default pool for these is ``avg``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from radio.featurize.teachers.base import Teacher, TeacherError, TeacherOutput, TeacherSpec, check_architecture
from radio.featurize.teachers.loading import is_hub_id, load_file_into
from radio.featurize.teachers.registry import TeacherBuilder, register_resolver, register_teacher
from radio.featurize.teachers.vit import to_grid

LIBRARY = "timm"


@dataclass(frozen=True)
class TimmModelArch:
    """A timm model name and the kwargs it is built with (``dynamic_img_size`` is always on)."""

    model_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self, pretrained: bool = False, **overrides: Any) -> nn.Module:
        """The model on the ambient default device; ``pretrained`` goes to timm's own loading."""
        kwargs = dict(self.kwargs, dynamic_img_size=True) | overrides
        return timm.create_model(self.model_name, pretrained=pretrained, **kwargs)


def _mappable(name: str, model: Any) -> tuple[int, int, int]:
    """``(summary_dim, feature_dim, patch)`` of a timm ViT, or a one-line error naming the field."""
    patch_embed = getattr(model, "patch_embed", None)
    patch_size = getattr(patch_embed, "patch_size", None)
    if patch_size is None:
        raise TeacherError(f"{name}: cannot map outputs: no patch_embed.patch_size (not a ViT with a patch grid)")
    if not isinstance(getattr(model, "num_prefix_tokens", None), int):
        raise TeacherError(f"{name}: cannot map outputs: no num_prefix_tokens (which tokens are not patches)")
    if not callable(getattr(model, "forward_head", None)) or not callable(getattr(model, "forward_features", None)):
        raise TeacherError(f"{name}: cannot map outputs: no forward_features/forward_head")
    if patch_size[0] != patch_size[1]:
        raise TeacherError(f"{name}: cannot map outputs: patch_embed.patch_size {tuple(patch_size)} is not square")
    feature_dim = int(model.num_features)
    summary_dim = int(getattr(model, "head_hidden_size", feature_dim) or feature_dim)
    return summary_dim, feature_dim, int(patch_size[0])


class TimmTeacher(Teacher):
    """A timm ViT (``self.model``, built with ``dynamic_img_size=True``).

    ``forward([B, 3, H, W])`` → summary ``[B, Cs]`` = ``forward_head(tokens, pre_logits=True)``,
    features ``[B, H/p, W/p, C]`` = ``forward_features`` tokens after the prefix tokens.
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module):
        super().__init__()
        summary_dim, feature_dim, patch = _mappable(spec.name, model)
        check_architecture(spec, summary_dim=summary_dim, feature_dim=feature_dim, patch=patch)
        self.spec = spec
        self.model = model

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        grid = self.input_grid(x)
        model: Any = self.model  # a timm model: its methods are not in nn.Module's types
        tokens = model.forward_features(x)  # [B, P + h*w, C]
        summary = model.forward_head(tokens, pre_logits=True)  # [B, Cs]
        features = to_grid(tokens[:, model.num_prefix_tokens :], grid)
        return TeacherOutput(summary=summary, features=features)


def create_timm_model(arch: TimmModelArch, spec: TeacherSpec, weights: str | None) -> nn.Module:
    """The model for ``weights``: None (random), ``hf-hub:`` id (timm's hub loading) or a local file."""
    if weights is None:
        return arch.create()
    if is_hub_id(weights):
        return timm.create_model(weights, pretrained=True, **dict(arch.kwargs, dynamic_img_size=True))
    model = arch.create()
    load_file_into(model, weights, teacher=spec.name)
    return model


def build_timm_teacher(spec: TeacherSpec, weights: str | None, *, arch: TimmModelArch) -> TimmTeacher:
    return TimmTeacher(spec, create_timm_model(arch, spec, weights))


def describe(name: str, arch: TimmModelArch, **spec_fields: Any) -> TeacherSpec:
    """The spec of ``arch`` read off its meta-device instance (see the module's rules)."""
    if not timm.is_model(arch.model_name):
        raise TeacherError(f"unknown teacher {name!r}: timm has no model {arch.model_name!r}")
    with torch.device("meta"):
        try:
            model: Any = arch.create()
        except TypeError as err:  # e.g. a CNN refusing dynamic_img_size
            raise TeacherError(f"{name}: cannot map outputs: timm cannot build it as a ViT ({err})") from err
    summary_dim, feature_dim, patch = _mappable(name, model)
    cfg: dict[str, Any] = dict(model.pretrained_cfg)
    fields: dict[str, Any] = dict(
        name=name,
        family=LIBRARY,
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        patch=patch,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        summary_dim=summary_dim,
        feature_dim=feature_dim,
        weights=f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else None,
        library=LIBRARY,
        licence=cfg.get("license"),
    )
    return TeacherSpec(**(fields | spec_fields))


def resolve(name: str, model_name: str) -> tuple[TeacherSpec, TeacherBuilder]:
    """``timm:MODEL`` → (spec, builder), timm's own default kwargs."""
    arch = TimmModelArch(model_name)
    return describe(name, arch), partial(build_timm_teacher, arch=arch)


register_resolver(LIBRARY, resolve)

# DINOv3 at the sizes C-RADIOv4 uses (7B) and below; summary = class token as upstream. The specs
# are written out (reading them off the meta models costs seconds at every import); a test checks
# them against describe().
DINOV3_ARCHS = {
    "dinov3_7b": TimmModelArch("vit_7b_patch16_dinov3", kwargs=dict(global_pool="token")),
    "dinov3_hplus": TimmModelArch("vit_huge_plus_patch16_dinov3", kwargs=dict(global_pool="token")),
    "dinov3_l": TimmModelArch("vit_large_patch16_dinov3", kwargs=dict(global_pool="token")),
    "dinov3_b": TimmModelArch("vit_base_patch16_dinov3", kwargs=dict(global_pool="token")),
    "dinov3_tiny": TimmModelArch(
        "vit_base_patch16_dinov3", kwargs=dict(global_pool="token", img_size=128, embed_dim=48, depth=2, num_heads=2)
    ),
}
_DINOV3_DIMS = {"dinov3_7b": 4096, "dinov3_hplus": 1280, "dinov3_l": 1024, "dinov3_b": 768, "dinov3_tiny": 48}
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

for _name, _arch in DINOV3_ARCHS.items():
    _tiny = _name.endswith("_tiny")
    _spec = TeacherSpec(
        name=_name,
        family="dinov3",
        input_size=256,  # timm's pretrained_cfg input_size for every DINOv3 size
        patch=16,
        summary_dim=_DINOV3_DIMS[_name],
        feature_dim=_DINOV3_DIMS[_name],
        weights=None if _tiny else f"hf-hub:timm/{_arch.model_name}.lvd1689m",
        library=LIBRARY,
        licence=None if _tiny else "dinov3-license",  # the DINOv3 License (model card)
        **IMAGENET,  # type: ignore[arg-type]
    )
    register_teacher(_spec, partial(build_timm_teacher, arch=_arch))
