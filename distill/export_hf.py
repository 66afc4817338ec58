"""`radio export --format hf`: a folder ``transformers.RadioModel.from_pretrained(dir)`` loads natively.

transformers (>= 5.23) ships ``RadioModel`` (``models/radio``) without remote code. Its layout:

- ``input_conditioner.norm_mean/norm_std [3, 1, 1]``: our input conditioner's buffers;
- ``embeddings.patch_projection.weight [D, 3*p*p]``: the bias-free patch projection on
  (C, ph, pw)-flattened patches, i.e. our conv weight reshaped;
- ``embeddings.position_embedding [1, G*G, D]``: the CPE grid, row-major;
- ``embeddings.cls_register_token [P, D]``: CLS tokens then registers;
- ``encoder.layer.i.*``: ``norm1``, ``attention.{q,k,v,o}_proj`` (our fused ``qkv`` split in
  three), ``norm2``, ``mlp.fc1/fc2`` and ``layer_scale{1,2}.lambda1`` (ones: we have no LayerScale);
- ``summary_idxs``: the CLS tokens its ``summary`` concatenates; all of ours, so its
  ``summary [B, n_cls * D]`` is :class:`radio.distill.export.RadioOutput`'s.

Adaptors and normalizers have no place in it (backbone only). Its CPE resizes the grid with
``align_corners=False`` (NVIDIA's code since 2025-06), ours with ``True``: the two are equal
where the input's longer side is ``cpe_max_size`` (no resize) and differ by the resampling
elsewhere, a small amount for a smooth trained grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import atomic_write, save_weights
from .student import Student

HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"


def hf_config(student: Student) -> dict:
    """``config.json`` of a transformers ``RadioConfig`` describing ``student``'s backbone."""
    spec = student.spec
    return {
        "model_type": "radio",
        "architectures": ["RadioModel"],
        "hidden_size": spec.dim,
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.heads,
        "mlp_ratio": spec.mlp_ratio,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "patch_size": spec.patch,
        "max_img_size": student.cpe.grid_size * spec.patch,
        "num_cls_tokens": student.num_cls,
        "num_registers": student.num_registers,
        "summary_idxs": list(range(student.num_cls)),
        "norm_mean": student.input_conditioner.mean.flatten().tolist(),
        "norm_std": student.input_conditioner.std.flatten().tolist(),
    }


def hf_state_dict(student: Student) -> dict[str, torch.Tensor]:
    """``student``'s backbone weights in ``transformers.RadioModel``'s key layout."""
    s = {k: v.detach().float().contiguous() for k, v in student.state_dict().items()}
    patch, grid = s["patch_embed.weight"], s["cpe.grid"]  # [D, 3, p, p], [1, G, G, D]
    prefix = [s[k][0] for k in ("cls_tokens", "registers") if k in s]
    dim = patch.shape[0]
    out = {
        "input_conditioner.norm_mean": s["input_conditioner.mean"].reshape(3, 1, 1),
        "input_conditioner.norm_std": s["input_conditioner.std"].reshape(3, 1, 1),
        "embeddings.patch_projection.weight": patch.reshape(dim, -1),
        "embeddings.position_embedding": grid.reshape(1, -1, dim),
        "embeddings.cls_register_token": torch.cat(prefix) if prefix else torch.zeros(0, dim),
        "summary_idxs": torch.arange(student.num_cls, dtype=torch.long),
    }
    for i in range(student.spec.depth):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for name in ("weight", "bias"):
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{theirs}attention.{proj}.{name}"] = s[f"{ours}attn.qkv.{name}"].chunk(3)[j].contiguous()
            out[f"{theirs}attention.o_proj.{name}"] = s[f"{ours}attn.proj.{name}"]
            for norm in ("norm1", "norm2"):
                out[f"{theirs}{norm}.{name}"] = s[f"{ours}{norm}.{name}"]
            for fc in ("fc1", "fc2"):
                out[f"{theirs}mlp.{fc}.{name}"] = s[f"{ours}mlp.{fc}.{name}"]
        for ls in ("layer_scale1", "layer_scale2"):
            out[f"{theirs}{ls}.lambda1"] = torch.ones(dim)
    return out


def write_hf(student: Student, out: Path) -> tuple[Path, str]:
    """Write ``out/config.json`` and ``out/model.safetensors``; returns the folder and how to load it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(hf_state_dict(student), out / HF_WEIGHTS, {"format": "pt"})
    text = json.dumps(hf_config(student), indent=2)
    atomic_write(out / HF_CONFIG, lambda f: f.write(text.encode()))
    line = (
        f"load with transformers.RadioModel.from_pretrained({str(out)!r}) (RGB in [0, 1]; backbone only: "
        "summary and features, no adaptors; equal to radio.load where the longer side is "
        f"{student.cpe.grid_size * student.spec.patch} px)"
    )
    return out, line
