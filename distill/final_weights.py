"""What a stage's final weights file (:attr:`~radio.distill.run.StageFolder.weights`) carries
beyond the student's weights: what export would otherwise read from the store.

When a stage finishes, the trainer writes the student's weights plus :func:`export_payload`
(tensors under ``export.``, JSON under the ``radio_export`` metadata key) into the stage's final
weights file; `radio export` reads both back, so a run trained on a cluster exports on a laptop
from the run folder alone. The trainer writes this file and export reads it: neither imports the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict

import torch

from .spaces import TENSORS, TargetSpace

EXPORT_META = "radio_export"  # safetensors metadata key of a final weights file: what export needs (JSON)
EXPORT_PREFIX = "export."  # tensors of a final weights file that only export reads (not the student's)
# The EMA of the student's weights (``ema.`` + a student key), when the run kept one: `radio export --ema`.
EMA_PREFIX = "ema."


def stage_keys(config, stage: int) -> dict[str, str]:
    """Per teacher of stage ``stage``, the target key of its last partition (the highest
    resolution it trained at), recorded for provenance."""
    keys: dict[str, str] = {}
    for part in config.stages[stage - 1].partitions:
        for key in part.targets:
            keys[config.target(key)[0]] = key  # later partitions (higher resolution) win
    return keys


def store_spaces(store, config, stage: int) -> dict[str, TargetSpace]:
    """Per teacher of stage ``stage``, the store's current normalizer as a :class:`TargetSpace`
    (the teacher's one normalizer, fitted over all its keys). Only for final weights written
    before they carried the normalizers the loss used: the trainer passes its own."""
    from radio.store.normalizers import current_fingerprint, normalizer_for

    return {
        t: TargetSpace.of(normalizer_for(store, teacher=t, mode=config.normalization), current_fingerprint(store, t))
        for t in stage_keys(config, stage)
    }


def export_payload(
    store, config, stage: int, spaces: Mapping[str, TargetSpace]
) -> tuple[dict[str, torch.Tensor], dict]:
    """What an export needs beyond the student's weights: ``({"export.normalizers.T.NAME":
    tensor}, meta)`` with ``meta`` holding the student's architecture and per teacher its dims,
    target key, normalization and provenance. ``spaces`` are the normalizers the heads were
    trained in (the loss's own objects, and for a head this stage did not train the space its
    weights recorded): never re-read from the store, which `radio fit-phis` may have changed
    since. The store gives only provenance. The trainer writes both into ``final.safetensors``
    so export never needs the store."""
    from radio.store.normalizers import normalizer_info

    from .checks import adaptor_specs

    keys = stage_keys(config, stage)
    tensors: dict[str, torch.Tensor] = {}
    teachers = []
    for spec in adaptor_specs(store, config):
        key, space = keys.get(spec.name), spaces.get(spec.name)
        entry = asdict(spec) | {"target_key": key, "normalization": config.normalization}
        if space is not None:
            entry["normalization"] = space.mode
            if space.mode != "none":
                for name in TENSORS:
                    tensors[f"{EXPORT_PREFIX}normalizers.{spec.name}.{name}"] = getattr(space, name)
            info = (
                normalizer_info(store, spec.name, fingerprint=space.fingerprint) if space.fingerprint else None
            ) or {}
            entry["normalizer"] = {"keys": info.get("keys"), "fingerprint": space.fingerprint}
            if key is not None:
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


def final_meta(path) -> dict | None:
    """The ``radio_export`` metadata of a final weights file (None: written before it had one)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        embedded = (f.metadata() or {}).get(EXPORT_META)
    return json.loads(embedded) if embedded is not None else None


def student_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own weights from a final weights file (without the export and EMA tensors)."""
    return {k: v for k, v in tensors.items() if not k.startswith((EXPORT_PREFIX, EMA_PREFIX))}


def ema_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EMA student's weights of a final weights file, in student keys (empty: none kept)."""
    return {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
