"""Read ``pipelines.yaml``, pick a named pipeline, apply the CLI's named overrides.

Every failure is a :class:`ConfigError` whose message is one line naming the file and the
field, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from radio.errors import RadioError

from .schema import PipelineConfig, PipelinesFile


class ConfigError(RadioError):
    """A pipelines file or an override that does not describe a valid pipeline."""


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic reports model-level validators with no field; the message then names it.
    return ".".join(str(p) for p in loc)


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line: ``SOURCE: FIELD: MESSAGE`` for the first problem, plus how many more there are."""
    errors = err.errors(include_url=False)
    # A container whose only item failed also reports itself as too short: drop such echoes,
    # i.e. errors whose location is a prefix of another error's location.
    locs = [tuple(e["loc"]) for e in errors]
    errors = [e for e, loc in zip(errors, locs) if not any(o[: len(loc)] == loc and o != loc for o in locs)]
    first = errors[0]
    msg = first["msg"].removeprefix("Value error, ")
    where = _field_path(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {where}: {msg}{more}" if where else f"{source}: {msg}{more}"


def read_pipelines(path: str | Path) -> PipelinesFile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (pass --config PATH)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'default' and 'pipelines'")
    # YAML anchors used only for sharing (keys starting with 'x-') are not pipelines.
    raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
    try:
        return PipelinesFile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(path), e)) from None


def load_pipeline(
    path: str | Path = "pipelines.yaml",
    name: str | None = None,
    *,
    data: str | None = None,
    store: str | None = None,
    out: str | None = None,
) -> PipelineConfig:
    """The resolved pipeline ``name`` (default: the file's ``default``) with named overrides applied.

    ``data`` replaces the shard list (a glob or comma-separated paths), ``store`` the store path,
    ``out`` the run folder.
    """
    pipelines = read_pipelines(path)
    name = name or pipelines.default
    if name not in pipelines.pipelines:
        raise ConfigError(f"{path}: no pipeline {name!r} (known: {', '.join(sorted(pipelines.pipelines))})")
    config = pipelines.pipelines[name]
    updates: dict[str, Any] = {}
    if data is not None:
        updates["data"] = config.data.model_dump() | {"shards": tuple(s for s in data.split(",") if s)}
    if store is not None:
        updates["store"] = config.store.model_dump() | {"path": store}
    if out is not None:
        updates["out"] = out
    if not updates:
        return config
    try:
        # Re-validate rather than model_copy(update=...), which would skip the validators.
        return PipelineConfig.model_validate(config.model_dump() | updates)
    except ValidationError as e:
        raise ConfigError(format_validation_error(f"{path} [{name}] with overrides", e)) from None


def fingerprint(obj: Any) -> str:
    """Stable short hash of a config (or part of one), for provenance and change detection."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_yaml(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
