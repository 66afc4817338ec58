"""`radio distill --init SOURCE`: a student's initial weights from timm, NVIDIA RADIO or transformers.

A SOURCE is one of

- ``timm:NAME[.tag]``: a timm model's pretrained weights, from the Hugging Face cache;
- ``hf-hub:ORG/NAME``: a hub repo in the Hugging Face cache (a transformers ``RadioModel`` or an
  NVIDIA RADIO repo, ``nvidia/C-RADIOv3-B``); nothing downloads at run time;
- a folder: a saved transformers ``RadioModel`` (``config.json`` + ``model.safetensors``);
- a file: radio's own final weights or checkpoint, NVIDIA RADIO's torch.hub checkpoint (a dict
  with ``args`` and ``state_dict``), or a timm / RadioModel state dict (safetensors or torch).

Every layout is first read into one neutral :class:`Backbone` (a ViT: patch kernel, position
grid, prefix tokens, timm ``Block`` keys) and the source's heads, then mapped onto our
:class:`~radio.distill.student.Student`:

- LayerScale (timm's ``ls1/ls2.gamma``, RADIO's ``.grandma``, transformers' ``lambda1``) is folded
  into the Linear before it (``attn.proj``, ``mlp.fc2``): ``γ ⊙ (W h + b) = (γ W) h + γ b``, exact;
- a patch-embedding bias (plain timm ViTs) is folded into the position grid (it is added to every
  patch token either way); a class token's own position embedding into the token;
- a position grid of another side is resampled bilinearly (``align_corners=True``, as our CPE) to
  ``cpe_max_size / 16``; a patch size other than 16 with timm's ``resample_patch_embed``;
- prefix tokens map by teacher name where the source names them (NVIDIA RADIO's ``args``), else by
  position when the counts agree, else a lone CLS token is repeated into every CLS slot; the
  rest start fresh. Each approximation is one ``note:`` line.

Files are read with ``torch.load(weights_only=True)`` (plus ``argparse.Namespace``, the plain
container of NVIDIA RADIO's ``args``) or safetensors: a pickle that would run code is refused.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from radio.errors import RadioError

from .checkpoint import load_checkpoint, load_weights
from .final_weights import EXPORT_PREFIX, final_meta, student_state
from .spaces import TargetSpace, final_spaces, from_records

TIMM = "timm:"
HUB = "hf-hub:"
NV = "radio_model.model."  # NVIDIA RADIO's RADIOModel (and transformers' saved RadioModel) backbone keys
NV_HUB = "base_model."  # the same backbone in a torch.hub training checkpoint
_LAYER_SCALE = {"ls1.gamma": "attn.proj", "ls2.gamma": "mlp.fc2"}
_DROPPED = ("norm.", "fc_norm.", "head.", "attn_pool.", "head_drop.")  # timm parts after the blocks


class InitError(RadioError):
    """An ``--init`` source that cannot be read or does not fit the student: one line."""


@dataclass
class Backbone:
    """A ViT in neutral form: ``patch [D, 3, p, p]`` (and ``patch_bias [D]``), ``grid [1, g, g, D]``
    (None: no position embedding), ``prefix [P, D]`` (CLS tokens, then registers), ``blocks``
    (timm ``Block`` keys ``N.norm1.weight``..., LayerScale already folded), the input ``mean`` /
    ``std`` ``[3]`` when the source records them, and the teacher name of each CLS slot."""

    patch: torch.Tensor
    grid: torch.Tensor | None
    prefix: torch.Tensor
    blocks: dict[str, torch.Tensor]
    patch_bias: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    cls_names: list[str] | None = None  # None: the source does not say which CLS is whose
    num_cls: int | None = None  # CLS tokens at the front of prefix (None: unknown)


@dataclass
class Source:
    """What ``--init`` read: a layout ``radio`` (our own: ``state``, ``spaces``) or a foreign
    :class:`Backbone` with heads ``{teacher: {"summary"|"features": MLP2 state}}``, the student
    fields the source fixes (``size``, ``cpe_max_size``, ...) and notes."""

    label: str
    layout: str
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    spaces: dict[str, TargetSpace] | None = None
    backbone: Backbone | None = None
    heads: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---- reading a SOURCE ------------------------------------------------------------------------------


def _not_cached(label: str, repo: str) -> InitError:
    from huggingface_hub import constants

    return InitError(
        f"--init {label}: {repo} is not in the Hugging Face cache {constants.HF_HUB_CACHE}; "
        f"download it first (`hf download {repo}`; HF_HUB_CACHE / HF_HOME select the cache)"
    )


def _hub_snapshot(repo: str, label: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not in the cache
        raise _not_cached(label, repo) from None


def _timm_file(name: str, label: str) -> tuple[Path, dict]:
    """The cached weights file of ``timm:NAME[.tag]`` and its pretrained config (mean, std)."""
    import timm
    from huggingface_hub import hf_hub_download

    try:
        pretrained = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - a name timm cannot parse
        pretrained = None
    cfg = pretrained.to_dict() if pretrained is not None else None
    if cfg is None or not cfg.get("hf_hub_id"):
        raise InitError(f"--init {label}: timm has no pretrained weights on the hub named {name!r}")
    repo = cfg["hf_hub_id"]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=True)), cfg
        except Exception:  # noqa: BLE001 - not cached under this name
            continue
    raise _not_cached(label, repo)


def open_source(init: str | Path) -> Source:
    """Read ``--init SOURCE`` (see the module doc); one :class:`InitError` line if it cannot be."""
    label = str(init)
    if label.startswith(TIMM):
        path, cfg = _timm_file(label[len(TIMM) :], label)
        src = _read_file(path, label)
        if src.backbone is not None and cfg.get("mean") and cfg.get("std"):
            src.backbone.mean, src.backbone.std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
        return src
    path = _hub_snapshot(label[len(HUB) :], label) if label.startswith(HUB) else Path(init)
    if path.is_dir():
        return _read_folder(path, label)
    if not path.is_file():
        raise InitError(
            f"--init {label}: no such file or folder (a SOURCE is a weights file, a folder, timm:NAME or hf-hub:ORG/NAME)"
        )
    return _read_file(path, label)


def _read_folder(path: Path, label: str) -> Source:
    config = path / "config.json"
    weights = path / "model.safetensors"
    if not config.is_file() or not weights.is_file():
        raise InitError(f"--init {label}: a model folder needs config.json and model.safetensors; {path} lacks them")
    cfg = json.loads(config.read_text())
    src = _read_file(weights, label)
    if cfg.get("model_type") == "radio" and src.backbone is not None:  # transformers' RadioModel
        if cfg.get("use_swiglu_ffn"):
            raise InitError(f"--init {label}: a SwiGLU RadioModel does not fit radio's student (plain GELU MLP)")
        src.backbone.num_cls = int(cfg.get("num_cls_tokens", 0)) or None
        if "max_img_size" in cfg:
            src.student["cpe_max_size"] = int(cfg["max_img_size"])
    if isinstance(cfg.get("args"), Mapping):  # NVIDIA RADIO's own hub repo (remote code): args in config.json
        _apply_args(src, cfg["args"])
    return src


def _read_file(path: Path, label: str) -> Source:
    if path.suffix == ".safetensors":
        tensors = load_weights(path)
        if _is_own(tensors):
            return Source(
                label, "radio", student_state(tensors), final_spaces(tensors, final_meta(path), EXPORT_PREFIX)
            )
        return _foreign(tensors, label)
    ckpt = load_checkpoint(path, require_model=False, safe_globals=(argparse.Namespace,))
    if isinstance(ckpt.get("model"), dict):
        return Source(label, "radio", ckpt["model"], from_records(ckpt.get("normalizers")))
    if "args" in ckpt and isinstance(ckpt.get("state_dict"), Mapping):  # NVIDIA RADIO torch.hub checkpoint
        ema = isinstance(ckpt.get("state_dict_ema"), Mapping)
        src = _foreign(dict(ckpt["state_dict_ema" if ema else "state_dict"]), label)
        args = ckpt["args"]
        _apply_args(src, vars(args) if isinstance(args, argparse.Namespace) else dict(args))
        if ema:
            src.notes.append(f"{label}: its EMA weights (state_dict_ema) are used, as NVIDIA's hubconf does")
        if ckpt.get("normalizers") is not None:
            src.spaces = from_records(ckpt["normalizers"])
        return src
    state = ckpt.get("state_dict", ckpt)
    return _foreign(dict(state), label)


def _is_own(tensors: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed.weight" in tensors or "cpe.grid" in tensors


def _foreign(state: dict, label: str) -> Source:
    """A foreign state dict by its keys: NVIDIA RADIO / saved RadioModel, transformers-native, timm."""
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitError(f"--init {label}: not a state dict of named tensors")
    if state and all(k.startswith("module.") for k in state):  # a DDP wrapper's prefix
        state = {k[len("module.") :]: v for k, v in state.items()}
    if any(k.startswith(NV) for k in state) or any(k.startswith(NV_HUB) for k in state):
        return _from_nvidia(state, label)
    if "embeddings.patch_projection.weight" in state:
        return _from_nvidia(_transformers_to_nvidia(state), label)
    if "embeds.proj.weight" in state:  # timm's NaFlexViT (naflexvit_*_radio_v3/v4): the full grid
        state = _naflex_to_timm(state)
    if "patch_embed.proj.weight" in state:
        return Source(label, "timm", backbone=_from_timm(state, label))
    if _is_own(state):
        return Source(label, "radio", state)
    raise InitError(
        f"--init {label}: no weights radio reads (radio's own, NVIDIA RADIO's, a timm ViT's or a RadioModel's); "
        f"first keys: {', '.join(list(state)[:3])}"
    )


# ---- layouts → Backbone --------------------------------------------------------------------------


def _square(n: int, label: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise InitError(f"--init {label}: a position embedding of {n} tokens is not a square grid")
    return side


def _fold_layer_scale(blocks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Blocks without LayerScale: each ``lsK.gamma [D]`` multiplied into the Linear it scales."""
    out = {k: v for k, v in blocks.items() if not any(k.endswith(f".{ls}") for ls in _LAYER_SCALE)}
    for k, gamma in blocks.items():
        for ls, linear in _LAYER_SCALE.items():
            if k.endswith(f".{ls}"):
                base = k[: -len(ls)] + linear
                out[f"{base}.weight"] = out[f"{base}.weight"] * gamma[:, None]
                out[f"{base}.bias"] = out[f"{base}.bias"] * gamma
    return out


def _from_timm(state: dict[str, torch.Tensor], label: str) -> Backbone:
    """A timm ``VisionTransformer`` state dict (plain ViT or ``vit_*_radio_v3/v4``) → :class:`Backbone`."""
    kernel = state["patch_embed.proj.weight"]
    dim = kernel.shape[0]
    tokens = [state[k][0] for k in ("cls_token", "reg_token") if k in state]
    prefix = torch.cat(tokens) if tokens else kernel.new_zeros(0, dim)
    grid = None
    if "pos_embed" in state:
        pos = state["pos_embed"][0]  # [N, D]: with no_embed_class=False its first tokens are the prefix's
        embedded = next(
            (k for k in (len(prefix), 1, 0) if k <= len(pos) and math.isqrt(len(pos) - k) ** 2 == len(pos) - k), 0
        )
        prefix = prefix + F.pad(pos[:embedded], (0, 0, 0, len(prefix) - embedded))
        side = _square(len(pos) - embedded, label)
        grid = pos[embedded:].reshape(1, side, side, dim)
    blocks = {k[len("blocks.") :]: v for k, v in state.items() if k.startswith("blocks.")}
    extra = [k for k in state if not k.startswith(("blocks.", "patch_embed.", "pos_embed", "cls_token", "reg_token"))]
    bad = [k for k in extra if not k.startswith(_DROPPED)]
    if bad:
        raise InitError(f"--init {label}: {bad[0]} has no place in radio's student (another ViT architecture)")
    return Backbone(
        kernel, grid, prefix, _fold_layer_scale(blocks), patch_bias=state.get("patch_embed.proj.bias"), num_cls=1
    )


def _naflex_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm NaFlexViT keys → VisionTransformer keys: its Linear patch projection over (ph, pw, C)
    patches becomes a conv kernel ``[D, C, ph, pw]``; its ``pos_embed [1, H, W, D]`` a token list."""
    out = {k: v for k, v in state.items() if not k.startswith("embeds.")}
    weight = state["embeds.proj.weight"]
    p = math.isqrt(weight.shape[1] // 3)
    out["patch_embed.proj.weight"] = weight.reshape(weight.shape[0], p, p, 3).permute(0, 3, 1, 2).contiguous()
    for k in ("proj.bias", "cls_token", "reg_token"):
        if f"embeds.{k}" in state:
            out["patch_embed.proj.bias" if k == "proj.bias" else k] = state[f"embeds.{k}"]
    if "embeds.pos_embed" in state:
        pos = state["embeds.pos_embed"]
        out["pos_embed"] = pos.reshape(1, -1, pos.shape[-1])
    return out


def _transformers_to_nvidia(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' native RadioModel keys → NVIDIA's ``radio_model.*`` (what save_pretrained writes)."""
    out: dict[str, torch.Tensor] = {}
    names = {
        "embeddings.patch_projection.weight": f"{NV}patch_generator.embedder.weight",
        "embeddings.position_embedding": f"{NV}patch_generator.pos_embed",
        "embeddings.cls_register_token": f"{NV}patch_generator.cls_token.token",
        "summary_idxs": "radio_model.summary_idxs",
    }
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k in names:
            out[names[k]] = v
        elif k.startswith("input_conditioner."):
            out[f"radio_model.{k}"] = v
        elif k.startswith("encoder.layer."):
            i, rest = k[len("encoder.layer.") :].split(".", 1)
            for proj in ("q_proj", "k_proj", "v_proj"):
                if rest.startswith(f"attention.{proj}."):
                    qkv.setdefault(f"{i}.{rest.rsplit('.', 1)[1]}", {})[proj] = v
                    break
            else:
                out[f"{NV}blocks.{i}.{rest.replace('attention.o_proj', 'attn.proj')}"] = v
        else:
            out[k] = v
    for key, parts in qkv.items():
        i, kind = key.split(".")
        out[f"{NV}blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def _from_nvidia(state: dict[str, torch.Tensor], label: str) -> Source:
    """NVIDIA RADIO's layouts (``radio_model.*`` of RADIOModel / a saved RadioModel, or a torch.hub
    checkpoint's ``base_model.*``, ``_heads.*``, ``_feature_projections.*``) → :class:`Source`."""
    hub = any(k.startswith(NV_HUB) for k in state)
    prefix = NV_HUB if hub else NV
    body = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if any(".parametrizations." in k for k in body):
        raise InitError(
            f"--init {label}: its weights are spectrally re-parametrized (args.spectral_reparam); "
            "load it once with NVIDIA's hubconf and save the realized state dict"
        )
    embedder = body.pop("patch_generator.embedder.weight")
    dim = embedder.shape[0]
    p = math.isqrt(embedder.shape[1] // 3)
    pos = body.pop("patch_generator.pos_embed", None)
    grid = None if pos is None else pos[0].reshape(1, _square(pos.shape[1], label), -1, dim)
    tokens = body.pop("patch_generator.cls_token.token", embedder.new_zeros(0, dim))
    bias = body.pop("patch_generator.embedder.bias", None)
    blocks = {}
    for k, v in body.items():
        if not k.startswith("blocks."):
            raise InitError(f"--init {label}: {prefix}{k} has no place in radio's student (another architecture)")
        k = k[len("blocks.") :].replace(".grandma", ".gamma").replace("layer_scale1.lambda1", "ls1.gamma")
        blocks[k.replace("layer_scale2.lambda1", "ls2.gamma")] = v
    cond = "input_conditioner." if hub else "radio_model.input_conditioner."
    mean, std = state.get(f"{cond}norm_mean"), state.get(f"{cond}norm_std")
    backbone = Backbone(
        embedder.reshape(dim, 3, p, p),
        grid,
        tokens,
        _fold_layer_scale(blocks),
        patch_bias=bias,
        mean=None if mean is None else mean.flatten(),
        std=None if std is None else std.flatten(),
    )
    src = Source(label, "nvidia", backbone=backbone)
    if grid is not None:
        src.student["cpe_max_size"] = grid.shape[1] * p
    # heads: RADIOModel adaptors (by name) or the training checkpoint's (by index or name; named by args later)
    for k, v in state.items():
        for pre, part in (("_heads.", "summary"), ("_feature_projections.", "features")):
            if k.startswith(pre):
                name, rest = k[len(pre) :].split(".", 1)
                src.heads.setdefault(name, {}).setdefault(part, {})[rest] = v
        rest = k[len("radio_model.") :] if k.startswith("radio_model.adaptors.") else k
        if rest.startswith("adaptors."):
            name, mlp, key = rest[len("adaptors.") :].split(".", 2)
            part = "features" if mlp == "feat_mlp" else "summary"
            src.heads.setdefault(name, {}).setdefault(part, {})[key] = v
    return src


def _apply_args(src: Source, args: Mapping[str, Any]) -> None:
    """NVIDIA RADIO's training ``args``: teacher names (CLS slots, head names), head sizes, CPE."""
    teachers = [t["name"] for t in args.get("teachers", []) if isinstance(t, Mapping)]
    if src.backbone is not None and args.get("cls_token_per_teacher", True) and teachers:
        src.backbone.cls_names = list(dict.fromkeys(teachers))
        src.backbone.num_cls = len(src.backbone.cls_names)
    src.heads = {(teachers[int(n)] if n.isdigit() and int(n) < len(teachers) else n): h for n, h in src.heads.items()}
    if args.get("cpe_max_size"):
        src.student["cpe_max_size"] = int(args["cpe_max_size"])
    if args.get("mlp_hidden_size"):
        src.student["adaptor_hidden"] = int(args["mlp_hidden_size"])
    if args.get("mlp_num_inner") is not None:
        src.student["adaptor_inner"] = int(args["mlp_num_inner"])


# ---- Backbone → our student ----------------------------------------------------------------------


def size_of(backbone: Backbone) -> str | None:
    """Our size name of a backbone (by width, depth and MLP width), or None."""
    from .student import STUDENT_SIZES

    dim = backbone.patch.shape[0]
    depth = len({k.split(".")[0] for k in backbone.blocks})
    hidden = backbone.blocks.get("0.mlp.fc1.weight")
    for name, spec in STUDENT_SIZES.items():
        if (
            spec.dim == dim
            and spec.depth == depth
            and hidden is not None
            and hidden.shape[0] == int(dim * spec.mlp_ratio)
        ):
            return name
    return None


def student_fields(src: Source) -> dict[str, Any]:
    """The ``student:`` fields the source fixes: its size (when it is one of ours) and what it records."""
    fields = dict(src.student)
    if src.backbone is not None:
        size = size_of(src.backbone)
        if size is not None:
            fields["size"] = size
    return fields


def _mlp2(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """NVIDIA's MLP2 keys (``fc1``, ``blocks.i.{0,2}``, ``final.{0,2}``) → our AdaptorMLP's."""
    out = {}
    for k, v in state.items():
        name = k.replace("final.0.", "norm.").replace("final.2.", "fc2.")
        if name.startswith("blocks."):
            _, i, layer, kind = name.split(".")
            name = f"inner.{i}.{'norm' if layer == '0' else 'fc'}.{kind}"
        out[prefix + name] = v
    return out


def convert(src: Source, own: Mapping[str, torch.Tensor], teachers: list[tuple[str, bool]]) -> tuple[dict, set[str]]:
    """A foreign source's weights in our student's keys (``own``: the student's state dict, whose
    tensors fill whatever the source lacks), and the heads loaded from it. ``teachers``: our
    ``(name, has_summary)`` in order. Approximations are appended to ``src.notes``."""
    b = src.backbone
    assert b is not None
    label, state = src.label, {}
    patch = own["patch_embed.weight"].shape[-1]
    kernel = b.patch
    if kernel.shape[0] != own["patch_embed.weight"].shape[0]:  # nothing else can fit either
        raise InitError(
            f"{label}: weights do not fit this student (width {kernel.shape[0]}, not {own['patch_embed.weight'].shape[0]}: "
            f"patch_embed.weight {tuple(kernel.shape)} != {tuple(own['patch_embed.weight'].shape)})"
        )
    if kernel.shape[-1] != patch:
        from timm.layers import resample_patch_embed

        kernel = resample_patch_embed(kernel, [patch, patch], verbose=False)
        src.notes.append(
            f"{label}: patch embedding resampled from {b.patch.shape[-1]} to {patch} px (timm's resample_patch_embed)"
        )
    state["patch_embed.weight"] = kernel
    for k, v in b.blocks.items():
        state[f"blocks.{k}"] = v
    side = own["cpe.grid"].shape[1]
    grid = b.grid if b.grid is not None else own["cpe.grid"].new_zeros(own["cpe.grid"].shape)
    if b.grid is None:
        src.notes.append(f"{label}: no position embedding; the CPE grid starts at zero")
    if b.patch_bias is not None:  # added to every patch token, as the grid is
        grid = grid + b.patch_bias.reshape(1, 1, 1, -1)
    if grid.shape[1] != side:
        table = F.interpolate(grid.permute(0, 3, 1, 2).float(), size=(side, side), mode="bilinear", align_corners=True)
        src.notes.append(
            f"{label}: position embedding resampled from {grid.shape[1]}x{grid.shape[2]} to the CPE grid {side}x{side}"
        )
        grid = table.permute(0, 2, 3, 1).to(b.patch.dtype)
    state["cpe.grid"] = grid
    state |= _prefix(b, own, [n for n, s in teachers if s], src.notes, label)
    if b.mean is not None and b.std is not None:
        state["input_conditioner.mean"] = b.mean.reshape(1, 3, 1, 1).float()
        state["input_conditioner.std"] = b.std.reshape(1, 3, 1, 1).float()
    else:
        state["input_conditioner.mean"], state["input_conditioner.std"] = (
            own["input_conditioner.mean"],
            own["input_conditioner.std"],
        )
        src.notes.append(f"{label}: records no input mean/std; the student keeps OpenAI CLIP's")
    loaded = set()
    for name, _ in teachers:
        head = src.heads.get(name)
        if head is None:
            continue
        mapped: dict[str, torch.Tensor] = {}
        for part, mlp in head.items():
            if part == "summary" and f"adaptors.{name}.summary.fc1.weight" not in own:
                continue  # a released summary head of a teacher we train without one (SAM)
            mapped |= _mlp2(mlp, f"adaptors.{name}.{part}.")
        wrong = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
        missing = [k for k in own if k.startswith(f"adaptors.{name}.") and k not in mapped]
        if wrong or missing:
            first = wrong[0] if wrong else missing[0]
            got = tuple(mapped[first].shape) if first in mapped else "absent"
            want = tuple(own[first].shape) if first in own else "absent"
            src.notes.append(f"{label}: head {name} does not fit ({first}: {got} there, {want} here): it starts fresh")
            continue
        state |= mapped
        loaded.add(name)
    return state, loaded


def _prefix(b: Backbone, own: Mapping[str, torch.Tensor], summary: list[str], notes: list[str], label: str) -> dict:
    """Our ``cls_tokens [1, n, D]`` and ``registers [1, r, D]`` from the source's prefix tokens."""
    n = own["cls_tokens"].shape[1] if "cls_tokens" in own else 0
    r = own["registers"].shape[1] if "registers" in own else 0
    src_cls = b.num_cls if b.num_cls is not None else min(1, len(b.prefix))
    if b.cls_names is None and len(b.prefix) == n + r and n + r > 0 and src_cls <= n:
        # as many prefix tokens as ours (timm's RADIO: 1 "cls" + the rest as "reg" tokens): by position
        if src_cls < n:
            notes.append(f"{label}: its {n + r} prefix tokens map by position (it does not say which CLS is whose)")
        out = {"cls_tokens": b.prefix[None, :n].clone()} if n else {}
        return out | ({"registers": b.prefix[None, n:].clone()} if r else {})
    cls, regs = b.prefix[:src_cls], b.prefix[src_cls:]
    out_cls = own["cls_tokens"][0].clone() if n else None
    if n and b.cls_names is not None:  # by teacher name
        fresh = []
        for k, name in enumerate(summary):
            if name in b.cls_names:
                out_cls[k] = cls[b.cls_names.index(name)]  # type: ignore[index]
            else:
                fresh.append(name)
        if fresh:
            notes.append(f"{label}: no CLS token for {', '.join(fresh)}: it starts fresh")
    elif n and len(cls) == n:
        out_cls = cls.clone()
    elif n and len(cls):
        out_cls = cls[:1].expand(n, -1).clone()
        notes.append(f"{label}: its CLS token is repeated into the student's {n} CLS tokens")
    out_reg = own["registers"][0].clone() if r else None
    if r:
        k = min(r, len(regs))
        out_reg[:k] = regs[:k]  # type: ignore[index]
        if k < r:
            notes.append(f"{label}: {r - k} of the student's {r} registers start fresh (the source has {len(regs)})")
    elif len(regs):
        notes.append(f"{label}: its {len(regs)} registers are dropped (the student has none)")
    out = {}
    if out_cls is not None:
        out["cls_tokens"] = out_cls[None]
    if out_reg is not None:
        out["registers"] = out_reg[None]
    return out


# ---- our student → NVIDIA RADIO (the key map the other way; tests build released-layout files) --


def to_nvidia(student: Mapping[str, torch.Tensor], teachers: list[tuple[str, bool]], cpe_max_size: int) -> dict:
    """A student's state dict → an NVIDIA RADIO torch.hub checkpoint ``{"args", "state_dict"}``:
    one CLS token per teacher (zeros for a teacher without a summary, as RADIO's unused SAM
    token), the registers, MLP2 heads under ``_heads.IDX`` / ``_feature_projections.IDX``."""
    dim = student["patch_embed.weight"].shape[0]
    cls = iter(student["cls_tokens"][0]) if "cls_tokens" in student else iter(())
    tokens = [next(cls) if s else torch.zeros(dim) for _, s in teachers]
    regs = list(student["registers"][0]) if "registers" in student else []
    sd: dict[str, torch.Tensor] = {
        f"{NV_HUB}patch_generator.embedder.weight": student["patch_embed.weight"].reshape(dim, -1),
        f"{NV_HUB}patch_generator.pos_embed": student["cpe.grid"].reshape(1, -1, dim),
        f"{NV_HUB}patch_generator.cls_token.token": torch.stack(tokens + regs),
        "input_conditioner.norm_mean": student["input_conditioner.mean"].reshape(3, 1, 1),
        "input_conditioner.norm_std": student["input_conditioner.std"].reshape(3, 1, 1),
    }
    sd |= {NV_HUB + k: v for k, v in student.items() if k.startswith("blocks.")}
    back = {"norm.": "final.0.", "fc2.": "final.2."}
    for i, (name, _) in enumerate(teachers):
        for part, pre in (("summary", "_heads."), ("features", "_feature_projections.")):
            head = f"adaptors.{name}.{part}."
            for k, v in student.items():
                if k.startswith(head):
                    key = k[len(head) :]
                    if key.startswith("inner."):
                        _, j, layer, kind = key.split(".")
                        key = f"blocks.{j}.{'0' if layer == 'norm' else '2'}.{kind}"
                    for a, z in back.items():
                        key = z + key[len(a) :] if key.startswith(a) else key
                    sd[f"{pre}{i}.{key}"] = v
    hidden = next((v.shape[0] for k, v in student.items() if k.endswith(".fc1.weight") and "adaptors." in k), 1520)
    inner = len(
        {k.split(".")[4] for k in student if ".inner." in k and k.startswith(f"adaptors.{teachers[0][0]}.features")}
    )
    args = argparse.Namespace(
        model="vit_base_patch16_224",
        cpe_max_size=cpe_max_size,
        cls_token_per_teacher=True,
        cpe_num_registers=len(regs),
        teachers=[{"name": n, "type": "generic", "use_summary": s} for n, s in teachers],
        mlp_version="v2",
        mlp_hidden_size=hidden,
        mlp_num_inner=inner,
        spectral_reparam=False,
    )
    return {"args": args, "state_dict": sd}


def with_student(student, fields: Mapping[str, Any], label: str):
    """The pipeline's ``student:`` config with the fields ``--init`` fixes: a field the pipeline
    leaves at its default takes the source's value; one it sets otherwise is one error naming both."""
    update = {}
    for name, value in fields.items():
        current = getattr(student, name)
        if current == value:
            continue
        if name in student.model_fields_set:
            raise InitError(
                f"--init {label}: its student has {name} {value}, the pipeline's student: says {name} {current}; "
                f"set student.{name}: {value} (or remove it)"
            )
        update[name] = value
    return student.model_copy(update=update) if update else student
