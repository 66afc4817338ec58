"""What `radio teachers` lists: one row of facts per teacher, parameters counted on the meta device.

The parameter count is the image model's (an open_clip teacher's text tower, used only for
zero-shot evaluation, is left out); building on the meta device allocates nothing, so the 7B
DINOv3 costs about a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from radio.featurize.teachers.registry import create_teacher, get_spec


@dataclass(frozen=True)
class TeacherRow:
    """One teacher: its spec's facts and its image model's parameter count."""

    name: str
    library: str
    family: str
    weights: str | None  # the released weights' id (hub id, open_clip tag, file); None: random init only
    patch: int
    resolution: int  # native input side (a canvas teacher's canvas)
    canvas: bool
    summary_dim: int | None
    feature_dim: int
    parameters: int
    licence: str | None  # as the weights' model card states it

    def to_json(self) -> dict:
        return asdict(self)


def image_model(teacher: nn.Module) -> nn.Module:
    """The module that sees images: an open_clip model's ``visual``, else the teacher's model."""
    model = getattr(teacher, "model", teacher)
    return getattr(model, "visual", model)


def teacher_row(name: str) -> TeacherRow:
    """The row of one teacher (registered, plugin, or a ``library:model`` / ``module:builder`` name)."""
    spec = get_spec(name)
    teacher = create_teacher(name, device="meta")
    parameters = sum(p.numel() for p in image_model(teacher).parameters())
    return TeacherRow(
        name=name,
        library=spec.library,
        family=spec.family,
        weights=spec.weights,
        patch=spec.patch,
        resolution=spec.input_size,
        canvas=spec.canvas,
        summary_dim=spec.summary_dim,
        feature_dim=spec.feature_dim,
        parameters=parameters,
        licence=spec.licence,
    )
