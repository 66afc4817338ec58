"""Teachers: frozen vision models whose outputs featurize caches as distillation targets.

``create_teacher("dfn_clip_h14_378", weights=get_spec("dfn_clip_h14_378").weights)`` returns a
frozen :class:`Teacher`; ``teacher(images)`` gives ``summary [B, Cs]`` (None for SAM) and
``features [B, h, w, C]``. Importing this package registers every family (clip, siglip,
dinov2, sam), each with its released sizes and a tiny random-init size for tests, the
C-RADIOv4 set (SigLIP2, DINOv3, SAM3), and the resolvers of ``timm:``, ``open_clip:`` and ``hf:``
names; plugins (the ``radio.teachers`` entry points) load on the first lookup.
"""

from radio.featurize.teachers.base import Teacher, TeacherError, TeacherOutput, TeacherSpec
from radio.featurize.teachers.registry import (
    create_teacher,
    get_spec,
    list_teachers,
    load_plugins,
    register_resolver,
    register_teacher,
)

# imported for their registrations
from radio.featurize.teachers import clip, dinov2, sam, siglip  # noqa: E402,F401  isort: skip
from radio.featurize.teachers import timm_family, open_clip_family, hf_family  # noqa: E402,F401  isort: skip

__all__ = [
    "Teacher",
    "TeacherError",
    "TeacherOutput",
    "TeacherSpec",
    "create_teacher",
    "get_spec",
    "list_teachers",
    "load_plugins",
    "register_resolver",
    "register_teacher",
]
