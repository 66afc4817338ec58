"""What makes an export folder trustworthy: ``config.json``'s schema, the sha256 of
``model.safetensors`` it records, a copy of itself inside that file, and finite tensors of the
expected names and shapes.

``radio export`` writes ``config.json`` as the export's description plus ``weights: {file, sha256}``,
and the same description (without ``weights``) into ``model.safetensors``'s metadata, so the
sha256 covers it: an edited ``config.json`` (say a teacher's ``normalization``) no longer matches
the copy the weights carry. :func:`read_export` checks all of it and raises one
:class:`~radio.distill.export.ExportError` line naming the field or tensor at fault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from radio.errors import RadioError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META_KEY = "radio_export_config"  # safetensors metadata: config.json as written, without ``weights``


class ExportError(RadioError):
    """A run that cannot be exported, or a folder that is not an export."""


class NonFiniteWeights(ExportError):
    """Weights holding a NaN or inf (a diverged run): never exported. Exit 1: the run is at fault."""

    exit_code = 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


# field → (check, what it should be); fields absent from a dict marked optional may be missing.
STUDENT_FIELDS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "size": (lambda v: isinstance(v, str), "a string", True),
    "cpe_max_size": (_is_int, "an integer", True),
    "register_multiple": (_is_int, "an integer", True),
    "adaptor_hidden": (_is_int, "an integer", True),
    "adaptor_inner": (_is_int, "an integer", False),
}
TEACHER_FIELDS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string", True),
    "summary_dim": (_opt(_is_int), "an integer or null", True),
    "feature_dim": (_is_int, "an integer", True),
    "normalization": (lambda v: isinstance(v, str), "a string", True),
    "target_key": (_opt(lambda v: isinstance(v, str)), "a string or null", False),
}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_export(path: Path, export_format: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, tensors)`` of the export folder ``path``, checked: JSON, format, fields and
    types, sha256, the embedded copy of the config, finite tensors. Shapes are checked by the
    caller (:func:`check_tensors`), which knows the model they must fit."""
    from .checkpoint import WeightsError, load_weights_bytes

    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise ExportError(f"{path}: not a radio export (needs {CONFIG} and {WEIGHTS})")
    try:
        meta = json.loads(cfg_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ExportError(f"{cfg_path}: not JSON ({where})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{cfg_path}: not a JSON object")
    fmt = meta.get("format")
    if fmt != export_format:
        raise ExportError(
            f"{cfg_path}: export format {fmt!r}, this version reads {export_format!r} "
            "(re-run `radio export` with this version)"
        )
    _check_fields(cfg_path, meta)
    data = w_path.read_bytes()
    try:
        tensors = load_weights_bytes(data, w_path)
    except WeightsError as e:
        raise ExportError(str(e)) from None
    digest = sha256_hex(data)
    if digest != meta["weights"]["sha256"]:
        raise ExportError(
            f"{w_path}: sha256 {digest} != {meta['weights']['sha256']} recorded in {CONFIG} "
            "(the file is damaged or was replaced)"
        )
    _check_embedded(cfg_path, w_path, meta, data)
    bad = non_finite(tensors)
    if bad:
        raise ExportError(f"{w_path}: tensor {bad} is not finite (NaN or inf)")
    return meta, tensors


def _check_fields(cfg_path: Path, meta: dict) -> None:
    def need(obj: dict, field: str, where: str, check, what: str, required: bool = True) -> None:
        if field not in obj:
            if required:
                raise ExportError(f"{cfg_path}: missing field {where}{field}")
            return
        if not check(obj[field]):
            raise ExportError(f"{cfg_path}: field {where}{field} must be {what}, got {json.dumps(obj[field])[:60]}")

    need(meta, "student", "", lambda v: isinstance(v, dict), "an object")
    for field, (check, what, required) in STUDENT_FIELDS.items():
        need(meta["student"], field, "student.", check, what, required)
    need(meta, "teachers", "", lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")
    names = []
    for i, t in enumerate(meta["teachers"]):
        if not isinstance(t, dict):
            raise ExportError(f"{cfg_path}: field teachers[{i}] must be an object, got {json.dumps(t)[:60]}")
        for field, (check, what, required) in TEACHER_FIELDS.items():
            need(t, field, f"teachers[{i}].", check, what, required)
        names.append(t["name"])
    if len(set(names)) != len(names):
        raise ExportError(f"{cfg_path}: field teachers: teacher names repeat ({', '.join(names)})")
    need(meta, "weights", "", lambda v: isinstance(v, dict), "an object")
    need(
        meta["weights"],
        "sha256",
        "weights.",
        lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
        "64 lowercase hex digits",
    )


def _check_embedded(cfg_path: Path, w_path: Path, meta: dict, data: bytes) -> None:
    """``config.json`` (without ``weights``) must equal the copy inside the (sha256-checked) weights."""
    n = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header (parsed once already)
    embedded = (json.loads(data[8 : 8 + n]).get("__metadata__") or {}).get(META_KEY)
    if embedded is None:
        raise ExportError(f"{w_path}: no copy of {CONFIG} in its metadata (not written by `radio export`)")
    described = {k: v for k, v in meta.items() if k != "weights"}
    diff = first_difference(json.loads(embedded), described)
    if diff is not None:
        field, was, now = diff
        raise ExportError(
            f"{cfg_path}: field {field} is {json.dumps(now)[:60]}, but the export was written with "
            f"{json.dumps(was)[:60]} ({CONFIG} was edited)"
        )


def first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first field (``teachers[0].normalization``) where ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{where}.{k}" if where else str(k)
            if k not in a or k not in b:
                return sub, a.get(k), b.get(k)
            d = first_difference(a[k], b[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d is not None:
                return d
        return None if len(a) == len(b) else (f"{where} (length)", len(a), len(b))
    return None if a == b and type(a) is type(b) else (where, a, b)


def non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor holding a NaN or inf (by name), or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_tensors(w_path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """``tensors`` must be exactly ``expected`` (name → shape): one line for the first missing,
    unexpected or misshaped tensor."""
    for name, shape in expected.items():
        if name not in tensors:
            raise ExportError(f"{w_path}: missing tensor {name} (shape {list(shape)})")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ExportError(
                f"{w_path}: tensor {name} has shape {list(tensors[name].shape)}, the config says {list(shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ExportError(f"{w_path}: unexpected tensor {extra[0]}{more}")
