"""Typed configuration of radio pipelines (``pipelines.yaml``)."""

if __name__ != "radio.config":  # one file, one module: the folder is the package radio.config
    raise ImportError(f"import radio.config, not {__name__}: config/ is importable only as radio.config")

from .load import ConfigError, fingerprint, load_pipeline, read_pipelines, to_yaml
from .schema import (
    PATCH,
    DataConfig,
    EvalConfig,
    FeaturizeConfig,
    PartitionConfig,
    PipelineConfig,
    StageConfig,
    StoreConfig,
    StudentConfig,
    TargetConfig,
    TeacherConfig,
)

__all__ = [
    "PATCH",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FeaturizeConfig",
    "PartitionConfig",
    "PipelineConfig",
    "StageConfig",
    "StoreConfig",
    "StudentConfig",
    "TargetConfig",
    "TeacherConfig",
    "fingerprint",
    "load_pipeline",
    "read_pipelines",
    "to_yaml",
]
