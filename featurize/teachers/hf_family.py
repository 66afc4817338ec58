"""transformers models by hub id or local folder (``model: hf:facebook/sam3``), and SAM3.

The model's ``config.json`` (a local folder, or the Hugging Face cache; nothing downloads here)
names its ``model_type``, and each mappable type has one rule:

* ``dinov3_vit`` (``DINOv3ViTModel``): summary = ``pooler_output`` (the normed class token),
  features = ``last_hidden_state`` after the class token and ``num_register_tokens`` registers;
  any multiple of the patch (RoPE);
* ``sam3`` / ``sam3_vision_model`` / ``sam3_vit_model``: SAM3's ViT backbone
  (``Sam3ViTModel``, the model's ``vision_encoder.backbone``); features = its
  ``last_hidden_state``, the vision features *before the neck* (the FPN ``Sam3VisionNeck``),
  no summary. A canvas teacher like SAM: windowed attention and the tiled position table are
  tied to the ``image_size`` grid (1008 = 72×14 for SAM3), so featurize places smaller images
  as mosaic tiles on that canvas.

Patch size and native resolution come from the config; normalization from the folder's
``preprocessor_config.json`` when there is one, else the model type's image processor defaults;
the licence from the model card's ``license:`` field when the card is at hand. Any other
``model_type`` is refused in one line naming it.

``weights:`` for an ``hf:`` teacher is the hub id (``hf-hub:ORG/NAME``) or folder
whose ``*.safetensors`` hold the model (the part the rule uses is taken by key prefix, e.g. SAM3's
``vision_encoder.backbone.``), or one local checkpoint file of the part itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from radio.featurize.teachers.base import Teacher, TeacherError, TeacherOutput, TeacherSpec, check_architecture
from radio.featurize.teachers.loading import HUB_PREFIX, load_file_into, load_into, strip_prefix
from radio.featurize.teachers.registry import TeacherBuilder, register_resolver, register_teacher
from radio.featurize.teachers.vit import to_grid

LIBRARY = "transformers"
PREFIX = "hf"
SAM3_TYPES = ("sam3", "sam3_vision_model", "sam3_vit_model")
DINOV3_TYPE = "dinov3_vit"


@dataclass(frozen=True)
class HfRule:
    """How one model type maps to a teacher: which module, which outputs, which checkpoint keys."""

    model_type: str
    family: str
    canvas: bool
    key_prefixes: tuple[str, ...]  # where the part sits in a full checkpoint, tried in order


def _part_config(config: Any) -> Any:
    """The config of the module the rule runs (SAM3: the ViT backbone's)."""
    if config.model_type == "sam3":
        return config.vision_config.backbone_config
    if config.model_type == "sam3_vision_model":
        return config.backbone_config
    return config


def _rule(name: str, config: Any) -> HfRule:
    if config.model_type in SAM3_TYPES:
        prefixes = {"sam3": ("vision_encoder.backbone.",), "sam3_vision_model": ("backbone.",), "sam3_vit_model": ()}
        return HfRule(config.model_type, "sam3", True, prefixes[config.model_type])
    if config.model_type == DINOV3_TYPE:
        return HfRule(DINOV3_TYPE, "dinov3", False, ())
    raise TeacherError(
        f"{name}: cannot map outputs of model_type {config.model_type!r}: no summary/features rule "
        f"(mappable: {', '.join((DINOV3_TYPE, *SAM3_TYPES))})"
    )


def _create(config: Any) -> nn.Module:
    """Random-init part on the ambient default device."""
    if config.model_type in SAM3_TYPES:
        from transformers.models.sam3.modeling_sam3 import Sam3ViTModel

        return Sam3ViTModel(_part_config(config))
    from transformers import DINOv3ViTModel

    return DINOv3ViTModel(config)


def _default_normalization(rule: HfRule) -> tuple[tuple[float, ...], tuple[float, ...]]:
    processor: Any
    if rule.family == "sam3":
        from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor as processor
    else:
        from transformers.models.dinov3_vit.image_processing_dinov3_vit import DINOv3ViTImageProcessor as processor
    return tuple(processor.image_mean), tuple(processor.image_std)


def _repo_file(ref: str, filename: str) -> Path | None:
    """``filename`` of a local folder or of a cached hub repo, else None (never downloads)."""
    if Path(ref).is_dir():
        path = Path(ref) / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref, filename)
    except ValueError:  # not a repo id
        return None
    return Path(found) if isinstance(found, str) else None


def _card_licence(ref: str) -> str | None:
    """The ``license:`` of the model card's front matter (``license_name:`` for ``other``)."""
    card = _repo_file(ref, "README.md")
    if card is None:
        return None
    import yaml

    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    licence = meta.get("license")
    return str(meta.get("license_name") or licence) if licence == "other" else (str(licence) if licence else None)


def load_config(name: str, ref: str) -> Any:
    from transformers import AutoConfig

    if ref.startswith(("/", ".", "~")) and not Path(ref).expanduser().is_dir():
        raise TeacherError(f"unknown teacher {name!r}: no such folder {ref}")
    try:
        return AutoConfig.from_pretrained(ref)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TeacherError(f"unknown teacher {name!r}: no transformers config for {ref!r} ({first})") from err


class HfTeacher(Teacher):
    """A transformers vision model (``self.model``) under one :class:`HfRule`.

    ``forward([B, 3, H, W])`` → DINOv3: summary ``[B, C]`` = ``pooler_output``, features
    ``[B, H/p, W/p, C]``; SAM3: summary None, features = the backbone's last hidden state.
    """

    def __init__(self, spec: TeacherSpec, model: nn.Module, rule: HfRule):
        super().__init__()
        config: Any = model.config
        prefix = 0 if rule.family == "sam3" else 1 + int(getattr(config, "num_register_tokens", 0))
        check_architecture(
            spec,
            summary_dim=None if rule.family == "sam3" else int(config.hidden_size),
            feature_dim=int(config.hidden_size),
            patch=int(config.patch_size),
        )
        self.spec = spec
        self.model = model
        self.rule = rule
        self.num_prefix_tokens = prefix

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        grid = self.input_grid(x)
        out = self.model(pixel_values=x)
        features = to_grid(out.last_hidden_state[:, self.num_prefix_tokens :], grid)
        summary = None if self.rule.family == "sam3" else out.pooler_output
        return TeacherOutput(summary=summary, features=features)


def _pretrained_state(name: str, ref: str, rule: HfRule) -> dict[str, torch.Tensor]:
    """The part's tensors from a folder's (or cached repo's) ``*.safetensors``."""
    folder = Path(ref)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(ref, allow_patterns=["*.safetensors", "*.json"]))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TeacherError(f"{name}: no *.safetensors in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= load_file(f, device="cpu")
    for prefix in rule.key_prefixes:
        if any(k.startswith(prefix) for k in state):
            return strip_prefix(state, prefix)
    return state


def build_hf_teacher(spec: TeacherSpec, weights: str | None, *, ref: str) -> HfTeacher:
    config = load_config(spec.name, ref)
    rule = _rule(spec.name, config)
    model = _create(config)
    if weights is not None:
        weights = weights.removeprefix(HUB_PREFIX)
        if Path(weights).is_file():
            load_file_into(
                model, weights, teacher=spec.name, prefix=rule.key_prefixes[0] if rule.key_prefixes else None
            )
        else:
            load_into(model, _pretrained_state(spec.name, weights, rule), teacher=spec.name)
    return HfTeacher(spec, model, rule)


def describe(name: str, ref: str, config: Any = None, **spec_fields: Any) -> TeacherSpec:
    """The spec of the model at ``ref`` (or of ``config``), from its config (see the rules)."""
    config = load_config(name, ref) if config is None else config
    rule = _rule(name, config)
    part = _part_config(config)
    mean, std = _default_normalization(rule)
    processor = _repo_file(ref, "preprocessor_config.json")
    if processor is not None:
        cfg = json.loads(processor.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    summary_dim = None if rule.canvas else int(part.hidden_size)
    fields: dict[str, Any] = dict(
        name=name,
        family=rule.family,
        input_size=int(part.image_size),
        patch=int(part.patch_size),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        summary_dim=summary_dim,
        feature_dim=int(part.hidden_size),
        weights=None if Path(ref).is_dir() else HUB_PREFIX + ref,
        canvas=rule.canvas,
        library=LIBRARY,
        licence=_card_licence(ref),
    )
    return TeacherSpec(**(fields | spec_fields))


def resolve(name: str, ref: str) -> tuple[TeacherSpec, TeacherBuilder]:
    """``hf:ORG/NAME`` or ``hf:/path/to/folder`` → (spec, builder)."""
    return describe(name, ref), partial(build_hf_teacher, ref=ref)


register_resolver(PREFIX, resolve)


# SAM3 as C-RADIOv4 distils it: the ViT backbone of facebook/sam3 at its 1008 canvas (72×72).
# transformers' Sam3Config() defaults are facebook/sam3's; the spec is built from them so it needs
# no cached config, and the builder reads them the same way.
SAM3_REF = "facebook/sam3"


def _build_sam3(spec: TeacherSpec, weights: str | None) -> HfTeacher:
    from transformers import Sam3Config
    from transformers.models.sam3.modeling_sam3 import Sam3ViTModel

    config = Sam3Config()
    rule = _rule(spec.name, config)
    model = Sam3ViTModel(_part_config(config))
    if weights is not None:
        weights = weights.removeprefix(HUB_PREFIX)
        if Path(weights).is_file():
            load_file_into(model, weights, teacher=spec.name, prefix=rule.key_prefixes[0])
        else:
            load_into(model, _pretrained_state(spec.name, weights, rule), teacher=spec.name)
    return HfTeacher(spec, model, rule)


SAM3_SPEC = TeacherSpec(
    name="sam3",
    family="sam3",
    input_size=1008,
    patch=14,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    summary_dim=None,
    feature_dim=1024,
    weights=HUB_PREFIX + SAM3_REF,
    canvas=True,
    library=LIBRARY,
    licence="sam-license",  # facebook/sam3's model card: license: other, license_name: sam-license
)
"""Written out (transformers' import alone costs ~1 s); a test checks it against describe()."""

register_teacher(SAM3_SPEC, _build_sam3)
