"""What a stage's final weights file (:attr:`~radio.distill.run.StageFolder.weights`) carries
beyond the student's weights: what export would otherwise read from the store.

When a stage finishes, the trainer writes the student's weights plus :func:`export_payload`
(tensors under ``export.``, JSON under the ``radio_export`` metadata key) into the stage's final
weights file; `radio export` reads both back, so a run trained on a cluster exports on a laptop
from the run folder alone. The trainer writes this file and export reads it: neither imports the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch
from torch import nn

EXPORT_META = "radio_export"  # safetensors metadata key of a final weights file: what export needs (JSON)
EXPORT_PREFIX = "export."  # tensors of a final weights file that only export reads (not the student's)


def teacher_normalizers(store, config, stage: int) -> dict[str, tuple[str, nn.Module]]:
    """Per teacher of stage ``stage``, ``(target key, Normalizer)`` that maps its adaptor's
    features back to its own space: the teacher's one normalizer, fitted over all its keys (the
    space its head was trained in at every resolution). The key is the one of the stage's last
    partition (the highest resolution it trained at), recorded for provenance. Empty when the
    config normalizes nothing.

    The one place that decides which normalizer state an export carries.
    """
    from radio.store.normalizers import normalizer_for

    if config.normalization == "none":
        return {}
    keys: dict[str, str] = {}
    for part in config.stages[stage - 1].partitions:
        for key in part.targets:
            keys[config.target(key)[0]] = key  # later partitions (higher resolution) win
    return {t: (key, normalizer_for(store, teacher=t, mode=config.normalization)) for t, key in keys.items()}


def export_payload(store, config, stage: int) -> tuple[dict[str, torch.Tensor], dict]:
    """What an export needs beyond the student's weights, read from the store once, when a stage
    finishes: ``({"export.normalizers.T.NAME": tensor}, meta)`` with ``meta`` holding the
    student's architecture and per teacher its dims, target key, normalization and provenance.
    The trainer writes both into ``final.safetensors`` so export never needs the store."""
    from radio.store.normalizers import normalizer_info

    from .checks import adaptor_specs

    norms = teacher_normalizers(store, config, stage)
    tensors: dict[str, torch.Tensor] = {}
    teachers = []
    for spec in adaptor_specs(store, config):
        key, norm = norms.get(spec.name, (None, None))
        entry = asdict(spec) | {"target_key": key, "normalization": config.normalization}
        if norm is not None:
            for name, t in norm.state_dict().items():
                tensors[f"{EXPORT_PREFIX}normalizers.{spec.name}.{name}"] = t
            info = normalizer_info(store, spec.name) or {}
            entry["normalizer"] = {"keys": info.get("keys"), "fingerprint": info.get("fingerprint")}
            entry["provenance"] = store.target(key).provenance.to_json()
        teachers.append(entry)
    s = config.student
    meta = {
        "student": {
            "size": s.size,
            "patch": s.patch,
            "cpe_max_size": s.cpe_max_size,
            "register_multiple": s.register_multiple,
            "adaptor_hidden": s.adaptor_hidden,
            "adaptor_inner": s.adaptor_inner,
        },
        "teachers": teachers,
        "stage": stage,
    }
    return tensors, meta


def final_metadata(meta: dict) -> dict[str, str]:
    """``meta`` as safetensors metadata (strings only)."""
    return {EXPORT_META: json.dumps(meta, default=str)}


def student_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own weights from a final weights file (without the export tensors)."""
    return {k: v for k, v in tensors.items() if not k.startswith(EXPORT_PREFIX)}
