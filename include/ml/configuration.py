"""Loads a config dir (config.yaml, schema.yaml, params.yaml) into the typed models of
`config_file.py`, `schema_file.py` and `params_file.py`, and each stage's view of them (`entities.py`).

Every problem is reported at load time as a `ConfigError` naming the file, the key path and what was
expected (the valid keys on a typo), so a bad edit never surfaces mid-run. The environment overrides
below are applied here and nowhere else; an error in an overridden value names the variable.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import SecretStr

from include.ml.config_errors import read_yaml, validated
from include.ml.config_file import ConfigFile, DataSourceConfig
from include.ml.entities import (
    BatchPredictionConfig,
    EvaluationConfig,
    IngestionConfig,
    MonitorJob,
    PipelineConfig,
    TrainingConfig,
    TransformationConfig,
    TuningJob,
    ValidationConfig,
)
from include.ml.exceptions import ConfigError
from include.ml.frozen import Frozen
from include.ml.models import FAMILIES
from include.ml.params_file import METRICS, ParamsFile, SearchParam, SearchPlan
from include.ml.release_settings import ReleasePlan
from include.ml.schema_file import SchemaConfig
from include.ml.training_inputs import code_commit

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "include" / "config"
CONFIG_FILES = ("config.yaml", "schema.yaml", "params.yaml")
CONFIG_DIR_ENV = "MLOPS_CONFIG_DIR"

# Values that differ per environment: variable -> the config.yaml key it replaces (docs/configuration.md).
ENV_OVERRIDES: Mapping[str, str] = {
    "MLOPS_SOURCE_URI": "data_source.uri",
    "MLOPS_ARTIFACTS_ROOT": "artifacts_root",
    "MLOPS_TRACKING_URI": "mlflow.tracking_uri",
    "MLOPS_ARTIFACT_LOCATION": "mlflow.artifact_location",
    "MLOPS_MLFLOW_UI_URL": "mlflow.ui_url",
    "MLOPS_DEPLOY_TARGET": "deployment.target",
    "MLOPS_MODEL_STORE": "deployment.local.model_store",
    "MLOPS_SERVING_URL": "deployment.local.server_url",
    "MLOPS_S3_BUCKET": "deployment.ec2.s3_bucket",
    "MLOPS_SIGNING_KEY": "signing.private_key",
    "MLOPS_SIGNING_PUBLIC_KEY": "signing.public_key",
    "MLOPS_KMS_KEY_ID": "signing.kms_key_id",
    "MLOPS_RETRAIN_ON": "airflow.retrain_on",
    "MLOPS_CAPTURE_DIR": "monitoring.capture_dir",
    "MLOPS_GROUND_TRUTH_URI": "monitoring.ground_truth_uri",
}
# The tuning study's database (params.yaml's tuning.storage): differs per environment, and may hold a password.
TUNING_STORAGE_ENV = "MLOPS_TUNING_STORAGE"
# A secret is only ever read from the environment: the key the verify step sends to API-key protected servers.
SERVING_API_KEY_ENV = "MLOPS_SERVING_API_KEY"


def resolve_config_dir(config_dir: Path | str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The directory given, else $MLOPS_CONFIG_DIR, else include/config; relative to the working directory."""
    env = os.environ if env is None else env
    return Path(config_dir or env.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR).resolve()


class ConfigurationManager:
    """Loads the three YAML files of a config directory and hands each stage its view of them."""

    def __init__(self, config_dir: Path | str | None = None, env: Mapping[str, str] | None = None,
                 source_uri: str | None = None, model_family: str | None = None, tune: bool | None = None,
                 tune_trials: int | None = None, tune_workers: int | None = None) -> None:
        """`source_uri`, `model_family`, `tune`, `tune_trials` and `tune_workers` override the YAML for one run
        (e.g. from a DAG trigger form).

        Overriding the family drops params.yaml's hyperparameters, which belong to the configured one, and
        tunes within that family only. `tune` turns tuning on or off; `tune_trials` replaces tuning.n_trials,
        `tune_workers` tuning.workers.
        """
        env = dict(os.environ if env is None else env)
        self.tune = tune  # the run's override, None when params.yaml decides
        self.config_dir = resolve_config_dir(config_dir, env)
        self.config = load(self.config_dir, env, source_uri, model_family, tune, tune_trials, tune_workers)

    def ingestion(self) -> IngestionConfig:
        schema = self.config.schema
        return IngestionConfig(self.config.data_source, tuple(c.name for c in schema.columns), schema)

    def validation(self) -> ValidationConfig:
        return ValidationConfig(self.config.schema)

    def transformation(self) -> TransformationConfig:
        c = self.config
        tuned = tuple(search_spaces(c)) if c.tuning.enabled else ()
        families = (c.model.family, *(f for f in tuned if f != c.model.family))
        return TransformationConfig(c.schema, c.split, families, str(self.config_dir / "schema.yaml"))

    def training(self) -> TrainingConfig:
        c = self.config
        tags = {f"config.{name}.sha256": digest for name, digest in c.config_hashes.items()}
        tags["git_sha"] = code_commit(c.project_root)
        return TrainingConfig(c.schema, c.model, c.mlflow, tags, str(self.config_dir / "schema.yaml"),
                              calibration=c.model.calibration)

    def tuning(self) -> TuningJob:
        c = self.config
        return TuningJob(self.training(), c.tuning, c.promotion.metric, search_spaces(c))

    def evaluation(self) -> EvaluationConfig:
        c = self.config
        return EvaluationConfig(c.schema, c.promotion, c.mlflow, c.card, release_strategy=c.release.strategy,
                                leakage=c.leakage)

    def batch_prediction(self) -> BatchPredictionConfig:
        c = self.config
        return BatchPredictionConfig(c.schema, c.data_source, c.batch, c.mlflow, c.model_store, c.signing)

    def monitor(self) -> MonitorJob:
        c = self.config
        return MonitorJob(c.schema, c.promotion, c.mlflow, c.monitoring, c.monitoring_policy, c.artifacts_root)


def load(config_dir: Path, env: Mapping[str, str], source_uri: str | None = None,
         model_family: str | None = None, tune: bool | None = None, tune_trials: int | None = None,
         tune_workers: int | None = None) -> PipelineConfig:
    paths = {name: config_dir / name for name in CONFIG_FILES}
    project = read_config_file(config_dir, env, source_uri)
    schema = validated(SchemaConfig, read_yaml(paths["schema.yaml"]), paths["schema.yaml"])
    _check_schema(schema, paths["schema.yaml"])
    raw_params, origins = read_yaml(paths["params.yaml"]), {}
    model = raw_params.get("model")
    if model_family and isinstance(model, dict) and model.get("family") != model_family:
        raw_params["model"] = {**model, "family": model_family, "hyperparameters": {}}
        origins["model.family"] = "the run's model_family"
    _override_tuning(raw_params, origins, model_family, tune, tune_trials, tune_workers, env.get(TUNING_STORAGE_ENV))
    params = validated(ParamsFile, raw_params, paths["params.yaml"], origins)
    if params.tuning.storage:  # a relative SQLite file lies under the project root, as MLflow's does
        params = params.model_copy(update={"tuning": params.tuning.model_copy(update={
            "storage": _absolute_uri(params.tuning.storage, PROJECT_ROOT)})})
    _check_params(params, schema, paths["params.yaml"])
    _check_release(params.release, project, paths["params.yaml"])
    hashes = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}
    api_key = env.get(SERVING_API_KEY_ENV)
    return PipelineConfig(
        project_root=PROJECT_ROOT, config_dir=config_dir, artifacts_root=project.artifacts_root,
        data_source=project.data_source, mlflow=project.mlflow, airflow=project.airflow,
        deployment=project.deployment, signing=project.signing, card=project.card, batch=project.batch,
        monitoring=project.monitoring, schema=schema, split=params.split, model=params.model,
        promotion=params.promotion, monitoring_policy=params.monitoring, tuning=params.tuning, release=params.release,
        leakage=params.leakage, config_hashes=hashes, serving_api_key=SecretStr(api_key) if api_key else None)


def _override_tuning(raw_params: dict[str, Any], origins: dict[str, str], model_family: str | None,
                     tune: bool | None, tune_trials: int | None, tune_workers: int | None = None,
                     storage: str | None = None) -> None:
    tuning = raw_params.get("tuning")
    if (tuning is None and tune is None) or not isinstance(tuning, (dict, type(None))):
        return  # no section and no request: no tuning (a malformed section is reported by validation)
    tuning = dict(tuning or {})
    for key, value, origin in (("enabled", tune, "the run's tune"), ("n_trials", tune_trials, "the run's tune_trials"),
                               ("families", [model_family] if model_family else None, "the run's model_family"),
                               ("workers", tune_workers, "the run's tune_workers"),
                               ("storage", storage or None, TUNING_STORAGE_ENV)):
        if value is not None:
            tuning[key] = value
            origins[f"tuning.{key}"] = origin
    raw_params["tuning"] = tuning


def search_spaces(config: PipelineConfig) -> dict[str, dict[str, SearchParam]]:
    """What each family the tuning searches draws its hyperparameters from: params.yaml's space, else its default."""
    spaces: dict[str, dict[str, SearchParam]] = {}
    for family in config.tuning.families or FAMILIES:
        default = FAMILIES[family].default_search_space(config.schema.task)
        spaces[family] = dict(config.tuning.search_space.get(
            family, {name: SearchParam.model_validate(spec) for name, spec in default.items()}))
    return spaces


def read_config_file(config_dir: Path, env: Mapping[str, str], source_uri: str | None = None) -> ConfigFile:
    """config.yaml alone, with the environment applied and every path absolute."""
    path = config_dir / "config.yaml"
    raw, origins = read_yaml(path), {}
    overrides = [(key, env.get(var), var) for var, key in ENV_OVERRIDES.items()]
    for key, value, origin in overrides:
        if value:
            _put(raw, key, value)
            origins[key] = origin
    if source_uri:  # request input, unlike the YAML and MLOPS_SOURCE_URI: checked against the operator's list
        _check_run_source(source_uri, validated(ConfigFile, raw, path, origins).data_source, path)
        _put(raw, "data_source.uri", source_uri)
        origins["data_source.uri"] = "the run's source"
    config = validated(ConfigFile, raw, path, origins)
    if config.deployment.target == "ec2" and not config.deployment.ec2.s3_bucket:
        raise ConfigError(str(path), "deployment.ec2.s3_bucket", "required when deployment.target is ec2")
    return _absolute_paths(config, PROJECT_ROOT)


def _check_run_source(source_uri: str, configured: DataSourceConfig, path: Path) -> None:
    """A run's source (a trigger form's `source`) must lie under data_source.allowed_sources; by default that is
    exactly the configured data_source.uri. Compared normalised (ingestion.refused_source)."""
    from include.ml.components.ingestion import refused_source  # here, not at the top: it imports pandas

    allowed = configured.allowed_sources or (configured.uri,)
    try:
        reason = refused_source(source_uri, allowed, PROJECT_ROOT)
    except ValueError as exc:  # an entry of the list itself
        raise ConfigError(str(path), "data_source.allowed_sources", str(exc)) from None
    if reason:
        listed = "" if configured.allowed_sources else " (data_source.uri; list others in data_source.allowed_sources)"
        raise ConfigError(str(path), "data_source.allowed_sources", f"the run's source {source_uri!r} is refused: "
                          f"{reason}; allowed: {', '.join(allowed)}{listed}")


def project_config(config_dir: Path | str | None = None) -> ConfigFile:
    """config.yaml of the current config dir, cached per file version and environment.

    What a DAG file needs at parse time and the Airflow plugin per request: no schema, no params, nothing
    heavy imported.
    """
    directory = resolve_config_dir(config_dir)
    path = directory / "config.yaml"
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return _cached_config_file(directory, stamp, tuple((var, os.environ.get(var, "")) for var in ENV_OVERRIDES))


@functools.lru_cache(maxsize=16)
def _cached_config_file(directory: Path, stamp: int | None, env: tuple[tuple[str, str], ...]) -> ConfigFile:
    return read_config_file(directory, dict(env))


# --- changing and checking --------------------------------------------------------------------------------------------

def _put(raw: dict[str, Any], key: str, value: str) -> None:
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[last] = value


def _check_schema(schema: SchemaConfig, path: Path) -> None:
    file, target = str(path), next((c for c in schema.columns if c.name == schema.target), None)
    if target is None:
        raise ConfigError(file, "target", f"target {schema.target!r} is not one of the columns")
    if target.role not in ("feature", "target"):
        raise ConfigError(file, f"columns.{target.name}.role", f"the target column cannot have role {target.role}")
    if target.nullable:
        raise ConfigError(file, f"columns.{target.name}.nullable", "the target column cannot be nullable (rows "
                          "without a target are dropped at ingest: target.missing)")
    if schema.task == "regression" and not target.is_numeric:
        raise ConfigError(file, f"columns.{target.name}.dtype",
                          f"a regression target must be float or int, got {target.dtype}")
    if schema.task == "classification" and target.dtype in ("float", "datetime"):
        raise ConfigError(file, f"columns.{target.name}.dtype",
                          f"a classification target must be int, category, ordinal or string, got {target.dtype}")
    for column in schema.columns:
        if column.role == "target" and column.name != schema.target:
            raise ConfigError(file, f"columns.{column.name}.role", f"only the target ({schema.target!r}) has role "
                              "target; use feature, id or ignore")
    for column in schema.features:
        if column.dtype == "string":
            raise ConfigError(file, f"columns.{column.name}.dtype", "a string column is free text and cannot be a "
                              "feature (it would be one-hot encoded value by value); choose role: id (a row key, "
                              "passed through), role: ignore (read, never learnt from), or dtype: category with "
                              "encoding: target (each value replaced by the target's mean for it)")
    if not schema.features:
        raise ConfigError(file, "columns", "expected at least one feature besides the target (role: feature)")


def _check_params(params: ParamsFile, schema: SchemaConfig, path: Path) -> None:
    metrics = METRICS[schema.task]
    if params.promotion.metric not in metrics:
        raise ConfigError(str(path), "promotion.metric", f"{params.promotion.metric!r} is not a {schema.task} "
                                                         f"metric; expected one of {', '.join(metrics)}")
    if schema.task == "regression" and params.model.calibration != "none":
        raise ConfigError(str(path), "model.calibration", f"{params.model.calibration!r} calibrates a classifier's "
                          "probabilities; schema.yaml's task is regression: remove the key or set it to none")
    _check_estimator_params(path, "model.hyperparameters", params.model.family, schema.task,
                            params.model.hyperparameters)
    for family, space in params.tuning.search_space.items():
        if family not in FAMILIES:
            raise ConfigError(str(path), f"tuning.search_space.{family}",
                              f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
        _check_estimator_params(path, f"tuning.search_space.{family}", family, schema.task, space)
    features = [c.name for c in schema.features]
    for name in params.monitoring.features:
        if name not in features:
            raise ConfigError(str(path), f"monitoring.features.{name}", f"not a feature of schema.yaml; expected "
                                                                        f"one of {', '.join(features)}")


def _check_release(release: ReleasePlan, project: ConfigFile, path: Path) -> None:
    if release.strategy == "progressive" and project.deployment.target == "none":
        raise ConfigError(str(path), "release.strategy", "progressive releases the candidate to the servers of "
                          "deployment.target, which is none in config.yaml; set a target (local or ec2) or "
                          "release.strategy: direct")


def release_plan(config_dir: Path | str | None = None) -> ReleasePlan:
    """params.yaml's `release:` section alone, validated (what the ml_release DAG file needs at parse time: its
    steps and whether a person approves). Errors as the full load reports them; nothing heavy imported."""
    path = resolve_config_dir(config_dir) / "params.yaml"
    section = read_yaml(path).get("release", {})
    if not isinstance(section, dict):
        raise ConfigError(str(path), "release", f"expected a mapping, got {type(section).__name__}")
    return validated(_ReleaseSection, {"release": section}, path).release


class _ReleaseSection(Frozen):
    release: ReleasePlan = ReleasePlan()


def tuning_workers(config_dir: Path | str | None = None) -> int:
    """params.yaml's tuning.workers (1 without the section): what the ml_pipeline DAG file bounds its mapped
    tune_worker tasks by at parse time. Errors as the full load reports them; nothing heavy imported."""
    path = resolve_config_dir(config_dir) / "params.yaml"
    section = read_yaml(path).get("tuning")
    if section is None:
        return 1
    if not isinstance(section, dict):
        raise ConfigError(str(path), "tuning", f"expected a mapping, got {type(section).__name__}")
    return validated(_TuningSection, {"tuning": section}, path).tuning.workers


class _TuningSection(Frozen):
    tuning: SearchPlan


def _check_estimator_params(path: Path, key: str, family: str, task: str, names: Mapping[str, Any]) -> None:
    estimator = FAMILIES[family].estimator_class(task)  # imports scikit-learn
    valid = set(estimator().get_params()) - {"random_state"}
    for name in names:
        if name not in valid:
            raise ConfigError(str(path), f"{key}.{name}", f"not a parameter of {estimator.__name__}; "
                                                          f"expected one of {', '.join(sorted(valid))}")


# --- paths -----------------------------------------------------------------------------------------------------

def _absolute_paths(config: ConfigFile, root: Path) -> ConfigFile:
    """Relative paths, including a relative SQLite store, are anchored at the project root, not the working dir."""
    source, mlflow, local = config.data_source, config.mlflow, config.deployment.local
    store = local.model_store or Path("models") / mlflow.registered_model_name
    signing, monitoring = config.signing, config.monitoring
    return config.model_copy(update={
        "monitoring": monitoring.model_copy(update={
            "capture_dir": _absolute_location(monitoring.capture_dir, root),
            "ground_truth_uri": monitoring.ground_truth_uri and _absolute_location(monitoring.ground_truth_uri, root)}),
        "signing": signing.model_copy(update={"private_key": _absolute(signing.private_key, root),
                                              "public_key": _absolute(signing.public_key, root),
                                              "kms_region": signing.kms_region or config.deployment.ec2.region}),
        "artifacts_root": _absolute(config.artifacts_root, root).resolve(),
        "data_source": source.model_copy(update={"uri": source.uri if "://" in source.uri
                                                 else str(_absolute(source.uri, root))}),
        "mlflow": mlflow.model_copy(update={
            "tracking_uri": _absolute_uri(mlflow.tracking_uri, root),
            "artifact_location": None if mlflow.artifact_location is None
            else _absolute_uri(mlflow.artifact_location, root)}),
        "deployment": config.deployment.model_copy(update={
            "local": local.model_copy(update={"model_store": _absolute(store, root)})}),
    })


def _absolute(path: Path | str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _absolute_location(location: str, root: Path) -> str:
    """A local path made absolute; a URI (s3://...) as it is."""
    return location if "://" in location else str(_absolute(location, root))


def _absolute_uri(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri[len('sqlite:///'):]}"
    if "://" not in uri:
        return _absolute(uri, root).as_uri()
    return uri
