"""Export a trained student, and load it back for inference (`radio export`, `radio.load`).

An export folder holds ``model.safetensors`` (student, adaptors, and per teacher the normalizer
that maps its adaptor's features back to the teacher's own space) and ``config.json`` (the
student's architecture, the teachers, which target key each normalizer came from). Nothing
else is needed to load it: no store, no pipelines file, no pickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
from torch import nn

from .adaptors import AdaptorOutput, AdaptorSpec
from .checkpoint import load_weights, save_weights
from .student import Student

if TYPE_CHECKING:
    from radio.config import PipelineConfig
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import Normalizer

EXPORT_FORMAT = "radio-export/1"


class ExportError(ValueError):
    """A run that cannot be exported, or a folder that is not an export."""


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
    def forward_intermediates(self, images: torch.Tensor, indices: int | list[int],
                              aggregation: Literal["sparse", "dense"] = "sparse") -> tuple[RadioOutput, list[torch.Tensor]]:
        """``(RadioOutput, [B, h, w, D] per chosen layer)``; see :meth:`Student.forward_intermediates`."""
        out, inter = self.student.forward_intermediates(images, indices, aggregation)
        return self._output(out), inter


def export(run: Path, out: Path, store: FeatureStore, config: PipelineConfig, stage: int | None = None) -> Path:
    """Write ``out/model.safetensors`` and ``out/config.json`` from a run's final weights.

    Each teacher's features are de-normalized with the normalizer of its key in the exported
    stage's last partition (the highest resolution it trained at).
    """
    from radio.store.normalizers import Normalizer

    from .checks import adaptor_specs
    from .trainer import FINAL, stage_dir

    stages = [stage] if stage else [s for s in range(len(config.stages), 0, -1) if (stage_dir(run, s) / FINAL).is_file()]
    if not stages or not (stage_dir(run, stages[0]) / FINAL).is_file():
        raise ExportError(f"{run}: no finished stage to export (looked for stageN/{FINAL}); run `radio distill` first")
    stage = stages[0]
    weights = load_weights(stage_dir(run, stage) / FINAL)
    specs = adaptor_specs(store, config)
    keys: dict[str, str] = {}
    for part in config.stages[stage - 1].partitions:
        for target_key in part.targets:
            keys[config.target(target_key)[0]] = target_key  # later partitions (higher resolution) win
    tensors = {f"student.{k}": v for k, v in weights.items()}
    teachers = []
    for spec in specs:
        key = keys.get(spec.name)
        entry = asdict(spec) | {"target_key": key, "normalization": config.normalization}
        if key is not None and config.normalization != "none":
            norm = Normalizer.from_store(store, key, "features", config.normalization)
            for name, t in norm.state_dict().items():
                tensors[f"normalizers.{spec.name}.{name}"] = t
            entry["provenance"] = store.target(key).attrs
        teachers.append(entry)
    s = config.student
    meta = {
        "format": EXPORT_FORMAT,
        "student": {"size": s.size, "patch": s.patch, "cpe_max_size": s.cpe_max_size,
                    "register_multiple": s.register_multiple, "adaptor_hidden": s.adaptor_hidden},
        "teachers": teachers,
        "stage": stage,
        "input": "RGB in [0, 1], [B, 3, H, W] with H and W multiples of 16",
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_weights(tensors, out / "model.safetensors", {"format": EXPORT_FORMAT})
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def load(path: str | Path, device: str | torch.device = "cpu") -> RadioModel:
    """Load an export folder as a :class:`RadioModel` in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ExportError(f"{path}: not a radio export (needs config.json and model.safetensors)")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: export format {meta.get('format')!r}, this version reads {EXPORT_FORMAT!r}")
    s = meta["student"]
    specs = [AdaptorSpec(t["name"], t["summary_dim"], t["feature_dim"]) for t in meta["teachers"]]
    student = Student(s["size"], specs, cpe_max_size=s["cpe_max_size"], register_multiple=s["register_multiple"],
                      adaptor_hidden=s["adaptor_hidden"])  # fmt: skip
    tensors = load_weights(path / "model.safetensors")
    student.load_state_dict({k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")})
    from radio.store.normalizers import Normalizer

    normalizers = nn.ModuleDict()
    for t in meta["teachers"]:
        prefix = f"normalizers.{t['name']}."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if own:
            c = own["mean"].shape[0]
            norm = Normalizer(t["normalization"], np.zeros(c), np.eye(c), np.eye(c), np.ones(c))
            norm.load_state_dict(own)
            normalizers[t["name"]] = norm
    model = RadioModel(student, normalizers, meta)
    return model.to(device).eval()
