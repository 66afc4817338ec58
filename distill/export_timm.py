"""`radio export --format timm`: the student's backbone in the layout timm's RADIO converter reads.

timm (>= 1.0.20) registers ``vit_{base,large,huge,giant}_patch16_radio_v3`` and converts NVIDIA's
RADIO checkpoints (keys ``radio_model.model.*``) in ``vision_transformer.checkpoint_filter_fn``:

- ``patch_generator.embedder.weight [D, 3*p*p]``: the bias-free patch projection, flattened (C, ph, pw);
- ``patch_generator.pos_embed [1, G*G, D]``: the CPE grid, row-major;
- ``patch_generator.cls_token.token [P, D]``: CLS tokens then registers; timm takes the first as
  its ``cls_token`` and the other ``P - 1`` as ``reg_token`` (hence ``reg_tokens=P-1``);
- ``blocks.*``: timm ``Block`` keys as they are (``ls1/ls2`` LayerScale is ``.grandma`` in RADIO).

Our blocks have no LayerScale; timm's base and large variants do (``init_values=1e-5``), so the
export writes ``gamma = 1``, which is exactly the identity. Adaptors, normalizers and the input
conditioner are not part of a timm backbone; they stay in the radio export.

Position embeddings: timm resamples the ``G x G`` grid once, at load, to a square of the model's
``img_size`` grid side and keeps the top-left window, bilinearly with ``align_corners=True`` for
the base and huge variants: our inference CPE (:func:`radio.distill.cpe.resize_then_crop`) exactly,
when ``img_size`` is the size the model is run at.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import save_weights

TIMM_FILE = "timm.safetensors"
PREFIX = "radio_model.model."
# Our size names → timm's variant, and the facts the two must share.
TIMM_VARIANTS = {
    "b": "vit_base_patch16_radio_v3",
    "l": "vit_large_patch16_radio_v3",
    "h": "vit_huge_patch16_radio_v3",
    "g": "vit_giant_patch16_radio_v3",
}
LAYER_SCALE = {"b", "l"}  # variants built with init_values (LayerScale params that must exist)


def timm_state_dict(student: dict[str, torch.Tensor], size: str) -> dict[str, torch.Tensor]:
    """A student's state dict (``Student.state_dict()`` keys) → RADIO checkpoint keys for timm."""
    if size not in TIMM_VARIANTS:
        raise ValueError(f"timm has RADIO variants for student sizes {', '.join(TIMM_VARIANTS)}, not {size!r}")
    return radio_checkpoint(student, size in LAYER_SCALE)


def radio_checkpoint(student: dict[str, torch.Tensor], layer_scale: bool) -> dict[str, torch.Tensor]:
    """A student's state dict → RADIO's backbone keys (``radio_model.model.*``), with LayerScale
    ``gamma = 1`` (the identity) when the timm variant has LayerScale parameters."""
    prefix = [student[k][0] for k in ("cls_tokens", "registers") if k in student]
    if not prefix:
        raise ValueError("a timm RADIO model needs a CLS token; this student has no summary teacher")
    patch = student["patch_embed.weight"]  # [D, 3, p, p]
    grid = student["cpe.grid"]  # [1, G, G, D]
    out = {
        f"{PREFIX}patch_generator.embedder.weight": patch.reshape(patch.shape[0], -1),
        f"{PREFIX}patch_generator.pos_embed": grid.reshape(1, grid.shape[1] * grid.shape[2], grid.shape[3]),
        f"{PREFIX}patch_generator.cls_token.token": torch.cat(prefix, dim=0),
    }
    depth = 0
    for k, v in student.items():
        if k.startswith("blocks."):
            out[PREFIX + k] = v
            depth = max(depth, int(k.split(".")[1]) + 1)
    if layer_scale:
        dim = patch.shape[0]
        for i in range(depth):
            for ls in ("ls1", "ls2"):
                out[f"{PREFIX}blocks.{i}.{ls}.grandma"] = torch.ones(dim, dtype=patch.dtype)
    return out


def timm_kwargs(student: dict[str, torch.Tensor], img_size: int = 512) -> dict[str, int]:
    """``timm.create_model`` keyword arguments besides the file: the register count and the
    input size the position grid is resampled for."""
    tokens = sum(student[k].shape[1] for k in ("cls_tokens", "registers") if k in student)
    return {"img_size": img_size, "reg_tokens": tokens - 1}


def prefix_tokens(path: Path) -> int:
    """CLS tokens + registers in a written timm checkpoint (read from its header only)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_slice(f"{PREFIX}patch_generator.cls_token.token").get_shape()[0]


def write_timm(student: dict[str, torch.Tensor], size: str, out: Path) -> Path:
    """Write ``out/timm.safetensors``; returns its path."""
    path = Path(out) / TIMM_FILE
    save_weights(timm_state_dict(student, size), path, {"format": "pt"})
    return path
