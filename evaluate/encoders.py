"""What evaluation runs on: an exported student or a registered teacher, behind one interface.

Resolutions are always *student* resolutions (pixels for a patch-16 model, token grid = r / 16).
A teacher with patch p runs at ``r · p / 16`` so its grid matches the student's at ``r``
(e.g. DINOv2/14 at 224 for 256, at 896 for 1024: notes/radio-code.md §2.7); its features are
then directly comparable position by position. Canvas teachers (SAM) run only at one size and
cannot be evaluated across resolutions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from radio.store.provenance import TargetProvenance

from .errors import EvalError

STUDENT_PATCH = 16


def pick_device(device: str | None) -> torch.device:
    """``device`` as asked, else CUDA when present, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_resolution(resolution: int) -> int:
    if resolution <= 0 or resolution % STUDENT_PATCH:
        raise EvalError(f"resolution {resolution} is not a positive multiple of {STUDENT_PATCH}")
    return resolution


class StudentEncoder:
    """An export loaded with ``radio.load``: the backbone's outputs, or one adaptor's (``adaptor``:
    a teacher name of the export, whose features come back in the teacher's own space)."""

    def __init__(self, model, adaptor: str | None = None, name: str = "student"):
        if adaptor is not None and adaptor not in model.teachers:
            raise EvalError(f"the model has no adaptor {adaptor!r} (it has: {', '.join(model.teachers)})")
        self.model = model
        self.adaptor = adaptor
        self.name = name if adaptor is None else f"{name}[{adaptor}]"
        self.device = next(model.parameters()).device

    def input_size(self, resolution: int) -> int:
        return _check_resolution(resolution)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] → ``[B, H/16, W/16, C]`` float32 on the CPU."""
        out = self.model(images.to(self.device))
        feats = out.features if self.adaptor is None else out.adaptors[self.adaptor].features
        return feats.float().cpu()

    def summary(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → ``[B, D]``: the concatenated CLS tokens, or the adaptor's summary."""
        out = self.model(images.to(self.device))
        if self.adaptor is None:
            return out.summary.float().cpu()
        s = out.adaptors[self.adaptor].summary
        if s is None:
            raise EvalError(f"adaptor {self.adaptor!r} has no summary head (its teacher has no summary target)")
        return s.float().cpu()


class TeacherEncoder:
    """A frozen teacher from the registry, run at the student-equivalent input size."""

    def __init__(self, teacher, name: str | None = None):
        spec = teacher.spec
        if spec.canvas:
            raise EvalError(
                f"{spec.name} runs only on its fixed {spec.input_size}x{spec.input_size} canvas; "
                "evaluate a teacher that runs at any resolution (DINOv2, CLIP, SigLIP)"
            )
        self.teacher = teacher
        self.name = name or spec.name
        self.device = next(teacher.parameters()).device

    def input_size(self, resolution: int) -> int:
        return _check_resolution(resolution) // STUDENT_PATCH * self.teacher.spec.patch

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.teacher.normalize(images.to(self.device))
        return self.teacher(x).features.float().cpu()

    @torch.inference_mode()
    def summary(self, images: torch.Tensor) -> torch.Tensor:
        s = self.teacher(self.teacher.normalize(images.to(self.device))).summary
        if s is None:
            raise EvalError(f"{self.teacher.spec.name} has no summary")
        return s.float().cpu()


def load_student(path: str | Path, adaptor: str | None = None, device: str | None = None) -> StudentEncoder:
    """An export folder as an encoder (errors of a bad folder are ``ExportError``)."""
    from radio.distill.export import load

    return StudentEncoder(load(path, pick_device(device)), adaptor, name=Path(path).name or "student")


def load_teacher(model: str, weights: str | None = None, device: str | None = None):
    """A registered teacher: ``weights`` a hub id or file; None means the spec's released weights,
    or for sizes without any (the tiny ones) the registry's seeded random init, the same teacher
    featurize builds."""
    from radio.featurize.teachers import create_teacher, get_spec

    return create_teacher(model, weights or get_spec(model).weights, device=pick_device(device))


def teacher_encoder(model: str, weights: str | None = None, device: str | None = None) -> TeacherEncoder:
    return TeacherEncoder(load_teacher(model, weights, device))


def encode_in_batches(fn, paths: list[Path], size: int, batch_size: int) -> torch.Tensor:
    """``fn`` on the images at ``paths`` loaded at ``size``, ``batch_size`` at a time, concatenated."""
    from .images import load_batch

    return torch.cat([fn(load_batch(list(paths[i : i + batch_size]), size)) for i in range(0, len(paths), batch_size)])


def default_resolution(model_config: dict, fallback: int = 224) -> int:
    """The highest student resolution among an export's target grids (what it last trained at)."""
    teachers = model_config.get("teachers", [])
    grids = [TargetProvenance.from_json(t["provenance"]).core_grid[0] for t in teachers if t.get("provenance")]
    return max(grids) * STUDENT_PATCH if grids else fallback
