"""Export a trained student, and load it back for inference (`radio export`, `radio.load`).

An export folder holds ``model.safetensors`` (student, adaptors, and per teacher the normalizer
that maps its adaptor's features back to the teacher's own space) and ``config.json`` (the
student's architecture, the teachers, which target keys each teacher's normalizer was fitted on). Nothing
else is needed to load it: no store, no pipelines file, no pickles.

Nothing else is needed to *write* it either: when a stage finishes, the trainer stores in its
``final.safetensors`` what export reads from the store (:mod:`.final_weights`), so a run
trained on a cluster exports on a laptop from the run folder alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
from torch import nn

from .adaptors import AdaptorOutput, AdaptorSpec
from .checkpoint import atomic_write, load_weights, save_weights
from .export_integrity import (
    CONFIG,
    META_KEY,
    WEIGHTS,
    ExportError,
    NonFiniteWeights,
    check_tensors,
    non_finite,
    read_export,
)
from .final_weights import (
    EMA_PREFIX,
    EXPORT_META,
    EXPORT_PREFIX,
    ema_state,
    export_payload,
    store_spaces,
    student_state,
)
from .run import FINAL_WEIGHTS, RunFolder
from .student import Student

if TYPE_CHECKING:
    from radio.store.normalizers import Normalizer

# /2: config.json records the sha256 of model.safetensors, which carries a copy of config.json.
EXPORT_FORMAT = "radio-export/2"


@dataclass
class RadioOutput:
    """``summary [B, n_cls * D]`` (the CLS tokens, concatenated as RADIO does), ``features
    [B, h, w, D]``, and per teacher its adaptor's ``summary [B, Cs]`` (cosine-trained: the
    teacher's direction) and ``features [B, h, w, C]`` de-normalized into the teacher's space."""

    summary: torch.Tensor
    features: torch.Tensor
    adaptors: dict[str, AdaptorOutput]


class RadioModel(nn.Module):
    """The exported student for inference: images in [0, 1], any size that is a multiple of 16."""

    def __init__(self, student: Student, normalizers: nn.ModuleDict, config: dict):
        super().__init__()
        self.student = student
        self.normalizers = normalizers
        self.config = config

    @property
    def teachers(self) -> list[str]:
        return list(self.student.adaptors.keys())

    def _output(self, out) -> RadioOutput:
        adaptors = {}
        for name, a in out.adaptors.items():
            norm = cast("Normalizer", self.normalizers[name]) if name in self.normalizers else None
            feats = norm.denormalize(a.features.float()) if norm is not None else a.features
            adaptors[name] = AdaptorOutput(a.summary, feats)
        return RadioOutput(out.summary.flatten(1), out.features, adaptors)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> RadioOutput:
        return self._output(self.student(images))

    @torch.inference_mode()
    def forward_intermediates(
        self, images: torch.Tensor, indices: int | list[int], aggregation: Literal["sparse", "dense"] = "sparse"
    ) -> tuple[RadioOutput, list[torch.Tensor]]:
        """``(RadioOutput, [B, h, w, D] per chosen layer)``; see :meth:`Student.forward_intermediates`."""
        out, inter = self.student.forward_intermediates(images, indices, aggregation)
        return self._output(out), inter


FORMATS = ("radio", "timm", "timm-naflex", "hf", "onnx")


def export(
    run: Path, out: Path, store=None, config=None, stage: int | None = None, fmt: str = "radio", ema: bool = False
) -> Path:
    """Write a run's final weights as ``fmt`` into ``out``; returns what :func:`export_as` wrote."""
    return export_as(run, out, store, config, stage, fmt, ema)[0]


def export_as(
    run: Path, out: Path, store=None, config=None, stage: int | None = None, fmt: str = "radio", ema: bool = False
) -> tuple[Path, str]:
    """Write ``out/model.safetensors`` and ``out/config.json`` from a run's final weights, or
    another format (:data:`FORMATS`): ``timm`` (backbone as ``out/timm.safetensors``, fixed grid),
    ``timm-naflex`` (backbone, full CPE grid), ``hf`` (transformers ``RadioModel`` folder) or
    ``onnx`` (backbone graph). Returns what was written and one line saying how to load it.

    ``ema``: the EMA weights the stage's final weights carry (``ema.*``) instead of the
    student's; a run that kept none is an :class:`ExportError`.

    Everything comes from the stage's ``final.safetensors`` (student weights, and what
    :func:`export_payload` put there: dims, normalizers, provenance), so neither the store nor
    the pipelines file is needed. A weights file written before it carried that payload is
    completed from ``store`` and ``config`` when given.
    """
    from safetensors import safe_open

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    folder = RunFolder(run)
    stages = [stage] if stage else folder.finished_stages()
    if not stages or not folder.stage(stages[0]).finished:
        raise ExportError(
            f"{run}: no finished stage to export (looked for stageN/{FINAL_WEIGHTS}); run `radio distill` first"
        )
    stage = stages[0]
    path = folder.stage(stage).weights
    weights = load_weights(path)
    bad = non_finite(weights)
    if bad is not None:
        raise NonFiniteWeights(f"{path}: tensor {bad} is not finite (NaN or inf); the run diverged: nothing exported")
    with safe_open(str(path), "pt") as f:
        embedded = (f.metadata() or {}).get(EXPORT_META)
    student_weights = student_state(weights)
    if ema:
        student_weights = ema_state(weights)
        if not student_weights:
            raise ExportError(f"{path}: this run kept no EMA weights (no {EMA_PREFIX}* tensors); export without --ema")
    if fmt == "timm":
        from .export_timm import TIMM_VARIANTS, prefix_tokens, write_timm

        size = json.loads(embedded)["student"]["size"] if embedded is not None else config.student.size
        try:
            where = write_timm(student_weights, size, out)
        except ValueError as e:
            raise ExportError(f"--format timm: {e}") from None
        return where, (
            f"load with timm.create_model({TIMM_VARIANTS[size]!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(where)!r}), img_size=SIZE, "
            f"reg_tokens={prefix_tokens(where) - 1}); SIZE: the one input size it equals radio.load at"
        )
    if embedded is not None:
        meta = json.loads(embedded)
        extra = {k: v for k, v in weights.items() if k.startswith(EXPORT_PREFIX)}
    elif store is not None and config is not None:
        extra, meta = export_payload(store, config, stage, store_spaces(store, config, stage))
    else:
        raise ExportError(
            f"{path} carries no export metadata (written by an older radio); "
            "export it with the pipeline's store available"
        )
    tensors = {f"student.{k}": v for k, v in student_weights.items()}
    tensors |= {k[len(EXPORT_PREFIX) :]: v for k, v in extra.items()}
    meta = {"format": EXPORT_FORMAT, **meta, "input": "RGB in [0, 1], [B, 3, H, W] with H and W multiples of 16"}
    if fmt == "radio":
        where = write_export(out, tensors, meta)
        return where, f"load with radio.load({str(where)!r})"
    return write_backbone(fmt, tensors, meta, out)


def write_backbone(fmt: str, tensors: dict[str, torch.Tensor], meta: dict, out: Path) -> tuple[Path, str]:
    """Write the student that a radio export of ``tensors`` and ``meta`` holds as ``fmt``
    (``timm-naflex``, ``hf`` or ``onnx``): built and checked through :func:`load` first, so every
    format ships exactly the model ``radio.load`` gives."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        student = load(write_export(Path(tmp) / "radio", tensors, meta)).student
    try:
        if fmt == "hf":
            from .export_hf import write_hf

            return write_hf(student, out)
        if fmt == "timm-naflex":
            from .export_naflex import write_naflex

            return write_naflex(student, out)
        from .export_onnx import write_onnx

        return write_onnx(student, out)
    except ValueError as e:
        raise ExportError(f"--format {fmt}: {e}") from None


def write_export(out: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write an export folder: ``tensors`` (``student.*``, ``normalizers.*``) and ``meta`` (the
    ``format``, the student's architecture, one entry per teacher: ``name``, ``summary_dim``,
    ``feature_dim``, ...). ``config.json`` is ``meta`` plus ``weights: {file, sha256}``; the
    weights file carries ``meta`` too, so an edited ``config.json`` is detected by :func:`load`.

    Refuses non-finite tensors (a diverged run must not ship).
    """
    bad = non_finite(tensors)
    if bad is not None:
        raise NonFiniteWeights(f"tensor {bad} is not finite (NaN or inf); the run diverged: nothing exported")
    out.mkdir(parents=True, exist_ok=True)
    described = json.loads(json.dumps(meta, default=str))  # exactly what config.json will read back as
    digest = save_weights(tensors, out / WEIGHTS, {"format": EXPORT_FORMAT, META_KEY: json.dumps(described)})
    text = json.dumps(described | {"weights": {"file": WEIGHTS, "sha256": digest}}, indent=2)
    atomic_write(out / CONFIG, lambda f: f.write(text.encode()))
    return out


def student_of(meta: dict) -> Student:
    """The student an export's ``meta`` (its config.json) describes, with fresh weights (the
    ambient torch RNG); ``ValueError``/``RuntimeError`` when it cannot be built."""
    s = meta["student"]
    return Student(
        s["size"],
        [AdaptorSpec(t["name"], t["summary_dim"], t["feature_dim"]) for t in meta["teachers"]],
        cpe_max_size=s["cpe_max_size"],
        register_multiple=s["register_multiple"],
        adaptor_hidden=s["adaptor_hidden"],
        adaptor_inner=s.get("adaptor_inner", 0),
    )


def load(path: str | Path, device: str | torch.device = "cpu") -> RadioModel:
    """Load an export folder as a :class:`RadioModel` in eval mode.

    A damaged folder (config.json not JSON, a field missing or of the wrong type, model.safetensors
    truncated or replaced, config.json edited, a tensor missing, extra, misshaped or not finite)
    is one :class:`ExportError` line naming the field or tensor.
    """
    from radio.store.normalizers import MODES, Normalizer

    from .student import STUDENT_SIZES

    path = Path(path)
    meta, tensors = read_export(path, EXPORT_FORMAT)
    s = meta["student"]
    if s["size"] not in STUDENT_SIZES:
        raise ExportError(
            f"{path / CONFIG}: field student.size {s['size']!r} is not a student size ({', '.join(STUDENT_SIZES)})"
        )
    try:
        student = student_of(meta)
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"{path / CONFIG}: the student it describes cannot be built ({e})") from None
    expected = {f"student.{k}": tuple(v.shape) for k, v in student.state_dict().items()}
    normalizers = nn.ModuleDict()
    for i, t in enumerate(meta["teachers"]):
        if "normalizer" not in t or t["normalization"] == "none":
            continue  # a teacher this stage did not train, or a pipeline that normalizes nothing
        if t["normalization"] not in MODES:
            raise ExportError(
                f"{path / CONFIG}: field teachers[{i}].normalization {t['normalization']!r} is not "
                f"one of {', '.join(MODES)}"
            )
        c = t["feature_dim"]
        norm = Normalizer(t["normalization"], np.zeros(c), np.eye(c), np.eye(c), np.ones(c))
        expected |= {f"normalizers.{t['name']}.{k}": tuple(v.shape) for k, v in norm.state_dict().items()}
        normalizers[t["name"]] = norm
    check_tensors(path / WEIGHTS, tensors, expected)
    student.load_state_dict({k[len("student.") :]: v for k, v in tensors.items() if k.startswith("student.")})
    for name, module in normalizers.items():
        prefix = f"normalizers.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    model = RadioModel(student, normalizers, meta)
    return model.to(device).eval()
