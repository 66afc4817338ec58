"""`radio export --format onnx`: the backbone as an ONNX graph with dynamic batch, height and width.

Exported with ``torch.onnx.export`` (TorchScript tracer, opset 17). The graph takes ``images
[B, 3, H, W]`` (RGB in [0, 1], H and W multiples of the patch size) and returns ``summary
[B, n_cls * D]`` and ``features [B, h, w, D]``, as :class:`radio.distill.export.RadioOutput`.

The inference CPE exports as it is: the grid's resize to ``M x M`` (``M = max(h, w)``,
``align_corners=True``) is an ONNX ``Resize`` whose size is computed from the input's shape,
and the top-left window a ``Slice``; a resize to the grid's own size is the identity, so no
branch on the size is needed. Adaptors and normalizers are not exported (backbone only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .student import Student

ONNX_FILE = "model.onnx"
OPSET = 17


class OnnxBackbone(nn.Module):
    """``images [B, 3, H, W]`` → ``(summary [B, n_cls * D], features [B, h, w, D])`` with the
    CPE written so that the tracer keeps H and W symbolic (the student's own forward computes
    ``max(h, w)`` in Python, which the tracer would freeze to the example's size)."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.student
        patch = s.spec.patch
        h, w = images.shape[-2] // patch, images.shape[-1] // patch
        patches = s.patch_embed(s.input_conditioner(images))  # [B, D, h, w]
        # as_tensor keeps the traced sizes symbolic; max() of Python ints would not.
        side: Any = torch.maximum(torch.as_tensor(h), torch.as_tensor(w)) if torch.jit.is_tracing() else max(h, w)
        # (a traced 0-d tensor where interpolate is typed for ints; the tracer records it as a shape)
        table = F.interpolate(
            s.cpe.grid.float().permute(0, 3, 1, 2), size=(side, side), mode="bilinear", align_corners=True
        )
        tokens = (patches + table[:, :, :h, :w].to(patches.dtype)).flatten(2).transpose(1, 2)  # [B, h*w, D]
        batch = images.shape[0]
        prefix = [t.expand(batch, -1, -1) for t in (s.cls_tokens, s.registers) if t is not None]
        tokens = torch.cat([*prefix, tokens], dim=1)
        for block in s.blocks:
            tokens = block(tokens)
        summary = tokens[:, : s.num_cls].flatten(1)
        features = tokens[:, s.num_prefix_tokens :].reshape(batch, h, w, tokens.shape[-1])
        return summary, features


def write_onnx(student: Student, out: Path) -> tuple[Path, str]:
    """Write ``out/model.onnx`` (with the input convention in its metadata); returns its path and
    how to load it."""
    import warnings

    import onnx

    path = Path(out) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    patch = student.spec.patch
    example = torch.rand(1, 3, 2 * patch, 3 * patch, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic: the test checks the result
        torch.onnx.export(
            OnnxBackbone(student).eval(),  # eval: the exporter restores this mode on every module after
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["summary", "features"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch", 1: "h", 2: "w"}},
        )
    model = onnx.load(str(path))
    for key, value in {
        "input": f"images: RGB in [0, 1], [B, 3, H, W], H and W multiples of {patch} (any size)",
        "outputs": "summary [B, n_cls * D], features [B, H/patch, W/patch, D]",
        "dynamic_hw": "true",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    line = (
        f"load with onnxruntime.InferenceSession({str(path)!r}); run(None, {{'images': x}}) with x float32 "
        f"[B, 3, H, W] RGB in [0, 1], H and W any multiples of {patch} → summary, features (backbone only: no adaptors)"
    )
    return path, line
