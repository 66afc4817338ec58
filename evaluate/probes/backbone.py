"""A frozen backbone for the dense probes: patch-feature grids of chosen blocks, for an export
(``radio.load``), a registered teacher, or a timm model.

Sizes are in the backbone's *unit* pixels: student pixels (16 per token) for exports and
teachers (a teacher with patch p runs at ``side / 16 * p``, so its grid equals the student's, as
in :mod:`radio.evaluate.encoders`), the model's own patch for a timm model. Block indices are
``0..depth-1``; the last block stands for the model's output features (after its final norm,
what ``radio.load`` and the teachers return), earlier blocks for the raw tokens after that block
(``forward_intermediates`` for exports and timm, forward hooks for teachers). On CUDA the
backbone runs under bf16 autocast; grids come back float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..errors import EvalError

STUDENT_PATCH = 16


def four_layers(depth: int) -> list[int]:
    """Probe3D's 4 layers: blocks at depth/4, /2, 3/4 and the last (repeats for shallow models)."""
    return [max(0, (depth * k + 3) // 4 - 1) for k in (1, 2, 3, 4)]


def parse_layers(text: str, depth: int) -> list[int]:
    """``"last"``, ``"4"`` (Probe3D's four), or comma-separated block indices (negative from the end)."""
    if text == "last":
        return [depth - 1]
    if text == "4":
        return four_layers(depth)
    try:
        idx = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"--layers {text!r}: expected 'last', '4' or comma-separated block indices") from None
    taken = [i + depth if i < 0 else i for i in idx]
    if not taken or any(not 0 <= i < depth for i in taken):
        raise EvalError(f"--layers {text!r}: block indices must be within [-{depth}, {depth - 1}]")
    return taken


class DenseBackbone:
    """Interface: ``name``, ``unit`` (pixels per token, the unit of crops), ``depth`` (blocks),
    ``device``, :meth:`input_size` and :meth:`layers`."""

    name: str
    unit: int
    depth: int
    device: torch.device

    def input_size(self, side: int) -> int:
        """The model's input side for ``side`` unit pixels."""
        return side

    def _layers(self, x: torch.Tensor, blocks: list[int]) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def layers(self, images: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
        """``images [B, 3, H, W]`` in [0, 1] (H, W multiples of ``unit``) → one ``[B, h, w, C]``
        float32 grid per entry of ``blocks`` (h = H / unit), on ``device``."""
        h, w = images.shape[-2:]
        x = images.to(self.device)
        if self.input_size(h) != h or self.input_size(w) != w:
            x = nn.functional.interpolate(
                x, size=(self.input_size(h), self.input_size(w)), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 1)
        auto = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with auto:
            wanted = sorted(set(blocks))
            got = dict(zip(wanted, self._layers(x, wanted), strict=True))
        grid = (h // self.unit, w // self.unit)
        out = []
        for b in blocks:
            g = got[b].float()
            if tuple(g.shape[1:3]) != grid:  # a CNN's stages: resample onto the unit grid
                g = nn.functional.interpolate(g.permute(0, 3, 1, 2), size=grid, mode="bilinear").permute(0, 2, 3, 1)
            out.append(g.clone())  # a normal tensor (not an inference one) the head can train on
        return out

    def dims(self, blocks: Sequence[int]) -> list[int]:
        """Channels of each requested grid (one forward of a small black image)."""
        s = 2 * self.unit
        return [g.shape[-1] for g in self.layers(torch.zeros(1, 3, s, s), blocks)]


class ExportBackbone(DenseBackbone):
    """A ``radio.load`` export's backbone (``RadioModel``)."""

    def __init__(self, model, name: str):
        self.model, self.name, self.unit = model, name, STUDENT_PATCH
        self.depth = model.student.spec.depth
        self.device = next(model.parameters()).device

    def _layers(self, x, blocks):
        inner = [b for b in blocks if b != self.depth - 1]
        if not inner:
            return [self.model(x).features]
        out, grids = self.model.forward_intermediates(x, inner)
        by_block = dict(zip(inner, grids, strict=True)) | {self.depth - 1: out.features}
        return [by_block[b] for b in blocks]


def _block_list(module: nn.Module) -> nn.ModuleList:
    """The transformer's block list: timm's ``blocks``, open_clip's ``transformer.resblocks``."""
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList | nn.Sequential) and name.split(".")[-1] in ("blocks", "resblocks") and len(m):
            return m  # type: ignore[return-value]
    raise EvalError(f"{type(module).__name__}: no transformer block list (blocks / resblocks) to take layers from")


class TeacherBackbone(DenseBackbone):
    """A registered (non-canvas) teacher; earlier blocks through forward hooks on its blocks."""

    def __init__(self, teacher, name: str | None = None):
        if teacher.spec.canvas:
            raise EvalError(f"{teacher.spec.name} runs only on its fixed canvas; dense probes need any input size")
        self.teacher, self.name, self.unit = teacher, name or teacher.spec.name, STUDENT_PATCH
        self.blocks = _block_list(teacher)
        self.depth = len(self.blocks)
        self.device = next(teacher.parameters()).device

    def input_size(self, side: int) -> int:
        return side // STUDENT_PATCH * self.teacher.spec.patch

    def _layers(self, x, blocks):
        grid = (x.shape[-2] // self.teacher.spec.patch, x.shape[-1] // self.teacher.spec.patch)
        n = grid[0] * grid[1]
        seen: dict[int, torch.Tensor] = {}

        def keep(i):
            def hook(_m, _inp, out):
                t = out[0] if isinstance(out, tuple) else out
                if t.shape[0] != x.shape[0]:  # sequence-first transformer
                    t = t.transpose(0, 1)
                seen[i] = t[:, -n:].reshape(t.shape[0], grid[0], grid[1], t.shape[-1])

            return hook

        handles = [self.blocks[b].register_forward_hook(keep(b)) for b in blocks if b != self.depth - 1]
        try:
            final = self.teacher(self.teacher.normalize(x)).features
        finally:
            for h in handles:
                h.remove()
        return [final if b == self.depth - 1 else seen[b] for b in blocks]


class TimmBackbone(DenseBackbone):
    """Any timm model with ``forward_intermediates`` (ViTs at any multiple of their patch)."""

    def __init__(self, model: nn.Module, name: str):
        import timm.data

        if not hasattr(model, "forward_intermediates"):
            raise EvalError(f"timm model {name} has no forward_intermediates")
        self.model, self.name = model, name
        pe = getattr(model, "patch_embed", None)
        self.unit = int(pe.patch_size[0]) if pe is not None else int(model.feature_info[-1]["reduction"])  # type: ignore[index]
        self.depth = len(model.blocks) if hasattr(model, "blocks") else len(model.feature_info)  # type: ignore[arg-type]
        cfg = timm.data.resolve_data_config({}, model=model)
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        self.device = next(model.parameters()).device

    def _layers(self, x, blocks):
        x = (x - self.mean.to(x)) / self.std.to(x)
        grids = self.model.forward_intermediates(x, indices=list(blocks), intermediates_only=True, output_fmt="NCHW")  # type: ignore[operator]
        return [g.permute(0, 2, 3, 1) for g in grids]


def create_timm(name: str, weights: str | None, device: torch.device, seed: int = 0) -> nn.Module:
    """A timm model, random-init (seeded) or with a weights file (timm's loader: safetensors or
    ``torch.load(weights_only=True)``); ViTs take any input size (``dynamic_img_size``)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            try:
                model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
            except TypeError:  # not a ViT: no such option
                model = timm.create_model(name, pretrained=False, num_classes=0)
        except RuntimeError as e:
            raise EvalError(f"timm model {name!r}: {e}") from None
    if weights is not None:
        if not Path(weights).is_file():
            raise EvalError(f"--weights {weights}: no such file (a timm model takes a local checkpoint)")
        # strict=False only for a classifier head the probe drops (num_classes=0); a missing
        # backbone tensor is an error
        found = timm.models.load_checkpoint(model, weights, strict=False, weights_only=True)
        missing = list(getattr(found, "missing_keys", []) or [])
        if missing:
            raise EvalError(f"--weights {weights}: {len(missing)} tensors of {name} missing, e.g. {missing[0]}")
    return model.to(device).eval()
