"""A toy teacher plugin: importing this module (the ``radio.teachers`` entry point) registers it.

``toy_teacher``: a 2-block DINOv3-style timm ViT at 64 px (patch 16), random init from radio's
fixed seed; summary = the class token, features = the patch tokens.
"""

from functools import partial

from radio.featurize.teachers import TeacherSpec, register_teacher
from radio.featurize.teachers.timm_family import TimmModelArch, build_timm_teacher

ARCH = TimmModelArch(
    "vit_base_patch16_dinov3", kwargs=dict(global_pool="token", img_size=64, embed_dim=32, depth=2, num_heads=2)
)
SPEC = TeacherSpec(
    name="toy_teacher",
    family="toy",
    input_size=64,
    patch=16,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    summary_dim=32,
    feature_dim=32,
    library="timm",
    licence="cc0-1.0",
)
register_teacher(SPEC, partial(build_timm_teacher, arch=ARCH))
