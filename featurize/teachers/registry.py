"""The teacher registry (timm-style): a frozen spec and a builder per name.

Family modules register their sizes at import (``radio.featurize.teachers`` imports them all)::

    @register_teacher(TeacherSpec(name="dinov2_tiny", ...))
    def _build(spec, weights): ...

and everything else goes through :func:`create_teacher`, which owns what every teacher has in
common: the random-init seed, the meta device, the target device/dtype, eval mode and frozen
parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from radio.featurize.teachers.base import Teacher, TeacherError, TeacherSpec
from radio.featurize.teachers.loading import seeded_init

TeacherBuilder = Callable[[TeacherSpec, str | None], Teacher]
"""``builder(spec, weights) -> Teacher``: builds on the ambient default device (CPU, or meta
under ``torch.device("meta")``) in float32; ``weights=None`` means random init (the registry
seeds it)."""


@dataclass(frozen=True)
class _Entry:
    spec: TeacherSpec
    builder: TeacherBuilder


_REGISTRY: dict[str, _Entry] = {}


def register_teacher(
    spec: TeacherSpec, builder: TeacherBuilder | None = None
) -> TeacherBuilder | Callable[[TeacherBuilder], TeacherBuilder]:
    """Register ``builder`` under ``spec.name``; without ``builder``, return a decorator.

    A name can be registered once: silently replacing a teacher would change what a store's
    target key means.
    """

    def register(fn: TeacherBuilder) -> TeacherBuilder:
        if spec.name in _REGISTRY:
            raise TeacherError(f"teacher {spec.name!r} is already registered")
        _REGISTRY[spec.name] = _Entry(spec, fn)
        return fn

    return register if builder is None else register(builder)


def list_teachers() -> list[str]:
    """Registered teacher names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise TeacherError(f"unknown teacher {name!r} (known: {', '.join(list_teachers())})")
    return _REGISTRY[name]


def get_spec(name: str) -> TeacherSpec:
    """The frozen spec of a registered teacher; unknown name → :class:`TeacherError`."""
    return _entry(name).spec


def create_teacher(
    name: str,
    weights: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Teacher:
    """Build a registered teacher, in eval mode with ``requires_grad=False`` everywhere.

    ``weights``: a hub id (``hf-hub:...``), a local checkpoint file, or None for random init with
    the fixed seed of :mod:`radio.featurize.teachers.loading` (the spec's released weights are
    ``get_spec(name).weights``; pass them explicitly). ``device="meta"`` builds the architecture
    without allocating anything (weights must then be None): enough to check dims and grids
    of the real sizes on any machine.
    """
    entry = _entry(name)
    device = torch.device(device)
    if device.type == "meta":
        if weights is not None:
            raise TeacherError(f"{name}: weights cannot be loaded onto the meta device")
        with torch.device("meta"):
            teacher = entry.builder(entry.spec, None)
    elif weights is None:
        with seeded_init():
            teacher = entry.builder(entry.spec, None)
    else:
        teacher = entry.builder(entry.spec, weights)
    teacher = teacher.to(device=device, dtype=dtype)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
