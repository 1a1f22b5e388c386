"""Everything a config dir holds, and each stage's view of it: plain frozen dataclasses the loader builds (not
parsed) from the models of the three YAML files (config_file.py, schema_file.py, params_file.py).

`configuration.py` reads the files, applies the environment overrides and validates them into those models; a
stage is given only the part it needs (an IngestionConfig, a TrainingConfig, a MonitorJob, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from pydantic import SecretStr

from include.ml.config_file import (
    AirflowConfig,
    BatchConfig,
    CardConfig,
    DataSourceConfig,
    DeploymentConfig,
    MlflowConfig,
    MonitoringSources,
    SigningConfig,
)
from include.ml.params_file import (
    LeakagePolicy,
    ModelConfig,
    MonitoringPolicy,
    PromotionConfig,
    SearchParam,
    SearchPlan,
    SplitConfig,
)
from include.ml.release_settings import ReleasePlan
from include.ml.schema_file import SchemaConfig


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The three files of a config dir, with paths made absolute and the environment applied."""

    project_root: Path
    config_dir: Path
    artifacts_root: Path
    data_source: DataSourceConfig
    mlflow: MlflowConfig
    airflow: AirflowConfig
    deployment: DeploymentConfig
    signing: SigningConfig
    schema: SchemaConfig
    split: SplitConfig
    model: ModelConfig
    promotion: PromotionConfig
    config_hashes: Mapping[str, str]
    monitoring: MonitoringSources = MonitoringSources()
    monitoring_policy: MonitoringPolicy = MonitoringPolicy()
    serving_api_key: SecretStr | None = None  # from MLOPS_SERVING_API_KEY only, never from a file
    card: CardConfig = CardConfig()
    batch: BatchConfig = BatchConfig()
    tuning: SearchPlan = SearchPlan(enabled=False)
    release: ReleasePlan = ReleasePlan()
    leakage: LeakagePolicy = LeakagePolicy()

    @property
    def model_store(self) -> Path:
        """The local target's store (the loader always resolves its default)."""
        assert self.deployment.local.model_store is not None
        return self.deployment.local.model_store


@dataclass(frozen=True)
class IngestionConfig:
    source: DataSourceConfig
    expected_columns: tuple[str, ...]
    schema: SchemaConfig | None = None  # None (drafting): the file as it is, no rows or columns dropped


@dataclass(frozen=True)
class ValidationConfig:
    schema: SchemaConfig


@dataclass(frozen=True)
class TransformationConfig:
    schema: SchemaConfig
    split: SplitConfig
    families: tuple[str, ...] = ("random_forest",)  # what will be fitted: model.family first, then tuning's others
    schema_file: str = "schema.yaml"  # the file a memory-guard refusal names


@dataclass(frozen=True)
class TrainingConfig:
    schema: SchemaConfig
    model: ModelConfig
    mlflow: MlflowConfig
    tags: Mapping[str, str]
    schema_file: str = "schema.yaml"  # the file a memory-guard refusal names
    # params.yaml's model.calibration, apart from `model`: tuning replaces `model` with each trial's family and
    # hyperparameters and then its best, and the same calibration wraps every one of them.
    calibration: Literal["none", "sigmoid", "isotonic"] = "none"


@dataclass(frozen=True)
class TuningJob:
    training: TrainingConfig  # what each trial fits (model.hyperparameters apply when model.family is tried)
    tuning: SearchPlan
    metric: str  # promotion.metric: the gate's yardstick, cross-validated
    spaces: Mapping[str, Mapping[str, SearchParam]]  # each family searched -> its space


@dataclass(frozen=True)
class EvaluationConfig:
    schema: SchemaConfig
    promotion: PromotionConfig
    mlflow: MlflowConfig
    card: CardConfig = CardConfig()
    # release.strategy: direct moves the champion alias when the gate promotes; progressive the candidate alias
    release_strategy: Literal["direct", "progressive"] = "direct"
    leakage: LeakagePolicy = LeakagePolicy()  # the leakage warning, and whether it fails the gate


@dataclass(frozen=True)
class BatchPredictionConfig:
    schema: SchemaConfig
    source: DataSourceConfig  # the CSV format, size caps and S3 endpoint of inputs (uri: the configured one)
    batch: BatchConfig
    mlflow: MlflowConfig  # the registry holding mlflow.registered_model_name
    model_store: Path  # where the scoring version is exported to as a bundle, as `main.py export` does
    signing: SigningConfig


@dataclass(frozen=True)
class MonitorJob:
    schema: SchemaConfig
    promotion: PromotionConfig
    mlflow: MlflowConfig
    capture: MonitoringSources
    params: MonitoringPolicy
    artifacts_root: Path

    @property
    def experiment_name(self) -> str:
        """The monitoring experiment: one run per period next to the training runs' experiment."""
        return f"{self.mlflow.experiment_name}-monitoring"
