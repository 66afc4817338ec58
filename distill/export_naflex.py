"""`radio export --format timm-naflex`: timm's ``naflexvit_*_radio_v3/v4``, full CPE grid kept.

timm's NaFlexViT RADIO models store the whole ``G x G`` position grid and, per input, resize it
to a square of the longer token side and keep the top-left window: our inference CPE
(:func:`radio.distill.cpe.resize_then_crop`) exactly when built with
``pos_embed_align_corners=True`` and ``pos_embed_grid_size=(G, G)``. So, unlike
``--format timm`` (the grid resampled once for one ``img_size``), it equals ``radio.load`` at any
input size and aspect. The checkpoint is in RADIO's layout (:func:`radio_checkpoint`), which
timm's ``checkpoint_filter_fn`` converts. Adaptors, normalizers and the input conditioner are
not part of it: timm takes CLIP-normalized input (its ``pretrained_cfg`` mean/std).
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import save_weights
from .export_timm import radio_checkpoint
from .student import Student

NAFLEX_FILE = "timm_naflex.safetensors"
# Our size names → timm's variant; a size timm has none for (``tiny``) is the base variant
# with its width and depth overridden.
NAFLEX_VARIANTS = {
    "b": "naflexvit_base_patch16_radio_v3",
    "l": "naflexvit_large_patch16_radio_v3",
    "h": "naflexvit_huge_patch16_radio_v3",
    "g": "naflexvit_giant_patch16_radio_v3",
    "so400m": "naflexvit_so400m_patch16_radio_v4",
}
NAFLEX_LAYER_SCALE = {"b", "l"}  # variants built with init_values (LayerScale params that must exist)


def naflex_variant(student: Student) -> tuple[str, dict]:
    """``(timm model name, create_model keyword arguments)`` that rebuild ``student``'s backbone."""
    spec = student.spec
    grid = student.cpe.grid_size
    kwargs: dict = {
        "reg_tokens": student.num_prefix_tokens - 1,
        "pos_embed_grid_size": (grid, grid),
        "pos_embed_align_corners": True,
    }
    if spec.name in NAFLEX_VARIANTS:
        return NAFLEX_VARIANTS[spec.name], kwargs
    overrides = {"embed_dim": spec.dim, "depth": spec.depth, "num_heads": spec.heads, "mlp_ratio": spec.mlp_ratio}
    return NAFLEX_VARIANTS["b"], overrides | kwargs


def write_naflex(student: Student, out: Path) -> tuple[Path, str]:
    """Write ``out/timm_naflex.safetensors``; returns its path and how to load it."""
    if student.num_cls == 0:
        raise ValueError("a timm RADIO model needs a CLS token; this student has no summary teacher")
    name, kwargs = naflex_variant(student)
    layer_scale = student.spec.name in NAFLEX_LAYER_SCALE or student.spec.name not in NAFLEX_VARIANTS
    path = Path(out) / NAFLEX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(radio_checkpoint(student.state_dict(), layer_scale), path, {"format": "pt"})
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    line = (
        f"load with timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file={str(path)!r}), "
        f"{args}) (CLIP-normalized input of any size; backbone only: no adaptors)"
    )
    return path, line
