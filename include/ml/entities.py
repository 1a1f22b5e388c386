"""Typed, immutable configuration objects, built by `configuration.ConfigurationManager`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

TASKS = ("regression", "classification")
DTYPES = ("float", "int", "category", "string")
# metric name -> True when a higher value is better
METRICS: Mapping[str, Mapping[str, bool]] = MappingProxyType({
    "regression": MappingProxyType({"rmse": False, "mae": False, "r2": True}),
    "classification": MappingProxyType({"accuracy": True, "f1_macro": True, "roc_auc": True}),
})


@dataclass(frozen=True)
class DataSourceConfig:
    uri: str
    separator: str
    zip_member: str | None
    s3_endpoint_url: str | None
    timeout_seconds: float


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    artifact_location: str | None  # None: the tracking server's default
    experiment_name: str
    registered_model_name: str
    ui_url: str


DEPLOY_TARGETS = ("none", "local", "ec2")


@dataclass(frozen=True)
class LocalTargetConfig:
    model_store: Path  # the store the local prediction server reads
    server_url: str


@dataclass(frozen=True)
class Ec2TargetConfig:
    aws_conn_id: str
    region: str
    s3_bucket: str
    s3_prefix: str
    tag_key: str
    tag_value: str
    # How the deploy task reaches an instance's server; fields: instance_id, private_ip, public_ip,
    # private_dns, tags (e.g. {tags[Name]}).
    instance_url: str
    command_timeout_seconds: int

    def source(self, model_name: str) -> str:
        return f"s3://{self.s3_bucket}/{self.s3_prefix.strip('/')}/{model_name}"


@dataclass(frozen=True)
class DeploymentConfig:
    target: str  # none | local | ec2
    model_alias: str
    batch_size: int
    verify_timeout_seconds: float
    local: LocalTargetConfig
    ec2: Ec2TargetConfig


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    dtype: str
    nullable: bool = False
    max_null_fraction: float = 0.5
    min: float | None = None
    max: float | None = None
    allowed: tuple[Any, ...] | None = None

    @property
    def is_numeric(self) -> bool:
        return self.dtype in ("float", "int")


@dataclass(frozen=True)
class SchemaConfig:
    task: str
    target: str
    min_rows: int
    columns: tuple[ColumnSpec, ...]

    @property
    def features(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.name != self.target)

    def feature_contract(self) -> dict[str, Any]:
        """What a served model expects as input; stored with the model so the server validates against it."""
        return {"task": self.task, "target": self.target, "features": [
            {k: v for k, v in {"name": c.name, "dtype": c.dtype, "nullable": c.nullable, "min": c.min,
                               "max": c.max, "allowed": list(c.allowed) if c.allowed else None}.items()
             if v is not None}
            for c in self.features]}

    @property
    def numeric_features(self) -> list[str]:
        return [c.name for c in self.features if c.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [c.name for c in self.features if not c.is_numeric]


@dataclass(frozen=True)
class SplitConfig:
    test_size: float
    random_state: int


@dataclass(frozen=True)
class ModelConfig:
    family: str
    random_state: int
    hyperparameters: Mapping[str, Any]


@dataclass(frozen=True)
class PromotionConfig:
    metric: str
    min_improvement: float
    higher_is_better: bool


@dataclass(frozen=True)
class PipelineConfig:
    """Everything loaded from the three YAML files, with paths made absolute."""

    project_root: Path
    config_dir: Path
    artifacts_root: Path
    data_source: DataSourceConfig
    mlflow: MlflowConfig
    deployment: DeploymentConfig
    schema: SchemaConfig
    split: SplitConfig
    model: ModelConfig
    promotion: PromotionConfig
    config_hashes: Mapping[str, str]
    schedule: str | None  # cron, UTC; None = only when triggered


# Per-stage views: each stage gets exactly what it needs.

@dataclass(frozen=True)
class IngestionConfig:
    source: DataSourceConfig
    expected_columns: tuple[str, ...]


@dataclass(frozen=True)
class ValidationConfig:
    schema: SchemaConfig


@dataclass(frozen=True)
class TransformationConfig:
    schema: SchemaConfig
    split: SplitConfig


@dataclass(frozen=True)
class TrainingConfig:
    schema: SchemaConfig
    model: ModelConfig
    mlflow: MlflowConfig
    tags: Mapping[str, str]


@dataclass(frozen=True)
class EvaluationConfig:
    schema: SchemaConfig
    promotion: PromotionConfig
    mlflow: MlflowConfig
