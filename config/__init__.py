"""Typed configuration of radio pipelines (``pipelines.yaml``)."""

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
