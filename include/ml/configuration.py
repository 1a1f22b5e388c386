"""Loads and checks config.yaml, schema.yaml and params.yaml into typed entities.

Every problem is reported at load time as a `ConfigError` naming the file, the
key and what was expected, so a bad edit never surfaces mid-run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from include.ml.entities import (
    DEPLOY_TARGETS, DTYPES, METRICS, TASKS, ColumnSpec, DataSourceConfig, DeploymentConfig, Ec2TargetConfig,
    EvaluationConfig, LocalTargetConfig,
    IngestionConfig, MlflowConfig, ModelConfig, PipelineConfig, PromotionConfig, SchemaConfig,
    SplitConfig, TrainingConfig, TransformationConfig, ValidationConfig,
)
from include.ml.exceptions import ConfigError
from include.ml.models import FAMILIES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "include" / "config"
CONFIG_FILES = ("config.yaml", "schema.yaml", "params.yaml")

# Values that differ per environment; documented in the README.
ENV_OVERRIDES = {
    "MLOPS_SOURCE_URI": "data_source.uri",
    "MLOPS_ARTIFACTS_ROOT": "artifacts_root",
    "MLOPS_TRACKING_URI": "mlflow.tracking_uri",
    "MLOPS_ARTIFACT_LOCATION": "mlflow.artifact_location",
    "MLOPS_MLFLOW_UI_URL": "mlflow.ui_url",
    "MLOPS_DEPLOY_TARGET": "deployment.target",
    "MLOPS_MODEL_STORE": "deployment.local.model_store",
    "MLOPS_SERVING_URL": "deployment.local.server_url",
    "MLOPS_S3_BUCKET": "deployment.ec2.s3_bucket",
}
_MISSING = object()


class _Section:
    """Reads one mapping of a YAML file, checking keys and value types."""

    def __init__(self, file: str, prefix: str, raw: Any, allowed: set[str]) -> None:
        self.file, self.prefix = file, prefix
        if not isinstance(raw, dict):
            raise ConfigError(file, prefix or "<top level>", f"expected a mapping, got {_kind(raw)}")
        unknown = sorted(set(map(str, raw)) - allowed)
        if unknown:
            raise ConfigError(file, self._key(unknown[0]),
                              f"unknown key; expected one of: {', '.join(sorted(allowed))}")
        self.raw = raw

    def _key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, types: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        if name not in self.raw:
            if default is _MISSING:
                raise ConfigError(self.file, self._key(name), "missing required key")
            return default
        value = self.raw[name]
        types = types if isinstance(types, tuple) else (types,)
        if value is None and type(None) in types:
            return None
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(self.file, self._key(name), f"expected {expected}, got {_kind(value)} {value!r}")
        return value

    def section(self, name: str, allowed: set[str]) -> "_Section":
        return _Section(self.file, self._key(name), self.get(name, dict), allowed)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "", "file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), "", f"malformed YAML: {where}{getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top level, got {_kind(data)}")
    return data


def _absolute(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _absolute_tracking_uri(uri: str, root: Path) -> str:
    """Anchor a relative SQLite or file store at the project root, not the working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri[len('sqlite:///'):]}"
    if "://" not in uri:
        return _absolute(uri, root).as_uri()
    return uri


def _optional_location(location: str | None, root: Path) -> str | None:
    return None if location is None else _absolute_tracking_uri(location, root)


class ConfigurationManager:
    """Loads the three YAML files of a config directory and hands out per-stage configs."""

    def __init__(self, config_dir: Path | str | None = None, env: dict[str, str] | None = None,
                 source_uri: str | None = None, model_family: str | None = None) -> None:
        """`source_uri` and `model_family` override the YAML for one run (e.g. from a DAG trigger form).

        Overriding the family drops params.yaml's hyperparameters, which belong to the configured one.
        """
        env = dict(os.environ if env is None else env)
        self.config_dir = Path(config_dir or env.get("MLOPS_CONFIG_DIR") or DEFAULT_CONFIG_DIR).resolve()
        self.config = self._load(env, source_uri, model_family)

    def _load(self, env: dict[str, str], source_uri: str | None, model_family: str | None) -> PipelineConfig:
        paths = {name: self.config_dir / name for name in CONFIG_FILES}
        raw = {name: _read_yaml(path) for name, path in paths.items()}
        hashes = {name: hashlib.sha256(paths[name].read_bytes()).hexdigest() for name in CONFIG_FILES}
        root = PROJECT_ROOT

        cfg = _Section(str(paths["config.yaml"]), "", raw["config.yaml"],
                       {"artifacts_root", "data_source", "mlflow", "deployment", "airflow"})
        src = cfg.section("data_source", {"uri", "separator", "zip_member", "s3_endpoint_url", "timeout_seconds"})
        uri = source_uri or env.get("MLOPS_SOURCE_URI") or src.get("uri", str)
        if "://" not in uri:
            uri = str(_absolute(uri, root))
        separator = src.get("separator", str)
        if len(separator) != 1:
            raise ConfigError(src.file, "data_source.separator", f"expected a single character, got {separator!r}")
        timeout = src.get("timeout_seconds", float, 30.0)
        if timeout <= 0:
            raise ConfigError(src.file, "data_source.timeout_seconds", "expected a positive number")
        data_source = DataSourceConfig(uri, separator, src.get("zip_member", (str, type(None)), None),
                                       src.get("s3_endpoint_url", (str, type(None)), None), timeout)

        ml = cfg.section("mlflow", {"tracking_uri", "artifact_location", "experiment_name", "registered_model_name",
                                    "ui_url"})
        mlflow_cfg = MlflowConfig(
            tracking_uri=_absolute_tracking_uri(env.get("MLOPS_TRACKING_URI") or ml.get("tracking_uri", str), root),
            artifact_location=_optional_location(
                env.get("MLOPS_ARTIFACT_LOCATION") or ml.get("artifact_location", (str, type(None))), root),
            experiment_name=ml.get("experiment_name", str),
            registered_model_name=ml.get("registered_model_name", str),
            ui_url=(env.get("MLOPS_MLFLOW_UI_URL") or ml.get("ui_url", str)).rstrip("/"),
        )
        schedule = cfg.section("airflow", {"schedule"}).get("schedule", (str, type(None)))
        if schedule is not None and len(schedule.split()) != 5 and not schedule.startswith("@"):
            raise ConfigError(cfg.file, "airflow.schedule",
                              f"expected a 5-field cron expression such as '0 2 * * *' (or null), got {schedule!r}")

        deployment = self._deployment(cfg.section("deployment", {
            "target", "model_alias", "batch_size", "verify_timeout_seconds", "local", "ec2"}), env, root)
        artifacts_root = _absolute(env.get("MLOPS_ARTIFACTS_ROOT") or cfg.get("artifacts_root", str), root)

        schema = self._schema(_Section(str(paths["schema.yaml"]), "", raw["schema.yaml"],
                                       {"task", "target", "min_rows", "columns"}))
        split, model, promotion = self._params(
            _Section(str(paths["params.yaml"]), "", raw["params.yaml"], {"split", "model", "promotion"}), schema,
            model_family)
        return PipelineConfig(root, self.config_dir, artifacts_root.resolve(), data_source, mlflow_cfg,
                              deployment, schema, split, model, promotion, MappingProxyType(hashes), schedule)

    @staticmethod
    def _deployment(dep: _Section, env: dict[str, str], root: Path) -> DeploymentConfig:
        target = env.get("MLOPS_DEPLOY_TARGET") or dep.get("target", str)
        if target not in DEPLOY_TARGETS:
            raise ConfigError(dep.file, "deployment.target", f"expected one of {', '.join(DEPLOY_TARGETS)}, "
                                                             f"got {target!r}")
        batch_size = dep.get("batch_size", int, 1)
        if batch_size < 1:
            raise ConfigError(dep.file, "deployment.batch_size", "expected at least 1 instance per batch")
        loc = dep.section("local", {"model_store", "server_url"})
        local = LocalTargetConfig(_absolute(env.get("MLOPS_MODEL_STORE") or loc.get("model_store", str), root),
                                  (env.get("MLOPS_SERVING_URL") or loc.get("server_url", str)).rstrip("/"))
        e = dep.section("ec2", {"aws_conn_id", "region", "s3_bucket", "s3_prefix", "tag_key", "tag_value",
                                "instance_url", "command_timeout_seconds"})
        ec2 = Ec2TargetConfig(e.get("aws_conn_id", str), e.get("region", str),
                              env.get("MLOPS_S3_BUCKET") or e.get("s3_bucket", str), e.get("s3_prefix", str),
                              e.get("tag_key", str), e.get("tag_value", str), e.get("instance_url", str),
                              e.get("command_timeout_seconds", int, 600))
        if target == "ec2" and not ec2.s3_bucket:
            raise ConfigError(dep.file, "deployment.ec2.s3_bucket", "required when deployment.target is ec2")
        return DeploymentConfig(target, dep.get("model_alias", str), batch_size,
                                dep.get("verify_timeout_seconds", float, 120.0), local, ec2)

    @staticmethod
    def _schema(top: _Section) -> SchemaConfig:
        task = top.get("task", str)
        if task not in TASKS:
            raise ConfigError(top.file, "task", f"expected one of {', '.join(TASKS)}, got {task!r}")
        target = top.get("target", str)
        min_rows = top.get("min_rows", int, 1)
        raw_columns = top.get("columns", dict)
        if not raw_columns:
            raise ConfigError(top.file, "columns", "expected at least one column")
        columns = []
        for name, spec in raw_columns.items():
            col = _Section(top.file, f"columns.{name}", spec,
                           {"dtype", "nullable", "max_null_fraction", "min", "max", "allowed"})
            dtype = col.get("dtype", str)
            if dtype not in DTYPES:
                raise ConfigError(top.file, f"columns.{name}.dtype",
                                  f"expected one of {', '.join(DTYPES)}, got {dtype!r}")
            lo, hi = col.get("min", (float, type(None)), None), col.get("max", (float, type(None)), None)
            if dtype not in ("float", "int") and (lo is not None or hi is not None):
                raise ConfigError(top.file, f"columns.{name}", f"min/max apply to float and int columns, not {dtype}")
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(top.file, f"columns.{name}", f"min ({lo}) is greater than max ({hi})")
            allowed = col.get("allowed", (list, type(None)), None)
            if dtype == "category" and not allowed:
                raise ConfigError(top.file, f"columns.{name}.allowed", "category columns need a non-empty list")
            fraction = col.get("max_null_fraction", float, 0.5)
            if not 0 <= fraction < 1:
                raise ConfigError(top.file, f"columns.{name}.max_null_fraction", "expected a number in [0, 1)")
            columns.append(ColumnSpec(str(name), dtype, col.get("nullable", bool, False), fraction,
                                      lo, hi, tuple(allowed) if allowed else None))
        schema = SchemaConfig(task, target, min_rows, tuple(columns))
        target_spec = next((c for c in columns if c.name == target), None)
        if target_spec is None:
            raise ConfigError(top.file, "target", f"target {target!r} is not one of the columns")
        if target_spec.nullable:
            raise ConfigError(top.file, f"columns.{target}.nullable", "the target column cannot be nullable")
        if task == "regression" and not target_spec.is_numeric:
            raise ConfigError(top.file, f"columns.{target}.dtype",
                              f"a regression target must be float or int, got {target_spec.dtype}")
        if task == "classification" and target_spec.dtype == "float":
            raise ConfigError(top.file, f"columns.{target}.dtype",
                              "a classification target must be int, category or string, got float")
        if not schema.features:
            raise ConfigError(top.file, "columns", "expected at least one feature besides the target")
        return schema

    @staticmethod
    def _params(top: _Section, schema: SchemaConfig,
                family_override: str | None) -> tuple[SplitConfig, ModelConfig, PromotionConfig]:
        sp = top.section("split", {"test_size", "random_state"})
        test_size = sp.get("test_size", float)
        if not 0 < test_size < 1:
            raise ConfigError(top.file, "split.test_size", f"expected a number between 0 and 1, got {test_size}")
        split = SplitConfig(test_size, sp.get("random_state", int))

        md = top.section("model", {"family", "random_state", "hyperparameters"})
        family = md.get("family", str)
        hyper = md.get("hyperparameters", (dict, type(None)), None) or {}
        if family_override and family_override != family:
            family, hyper = family_override, {}
        if family not in FAMILIES:
            raise ConfigError(top.file, "model.family",
                              f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
        estimator = FAMILIES[family].estimator_class(schema.task)
        valid = set(estimator().get_params()) - {"random_state"}
        for name in hyper:
            if name not in valid:
                raise ConfigError(top.file, f"model.hyperparameters.{name}",
                                  f"not a parameter of {estimator.__name__}; expected one of {', '.join(sorted(valid))}")
        model = ModelConfig(family, md.get("random_state", int, 0), MappingProxyType(dict(hyper)))

        pr = top.section("promotion", {"metric", "min_improvement"})
        metric = pr.get("metric", str)
        metrics = METRICS[schema.task]
        if metric not in metrics:
            raise ConfigError(top.file, "promotion.metric",
                              f"{metric!r} is not a {schema.task} metric; expected one of {', '.join(metrics)}")
        margin = pr.get("min_improvement", float)
        if margin < 0:
            raise ConfigError(top.file, "promotion.min_improvement", "expected a number >= 0")
        return split, model, PromotionConfig(metric, margin, metrics[metric])

    def ingestion(self) -> IngestionConfig:
        return IngestionConfig(self.config.data_source, tuple(c.name for c in self.config.schema.columns))

    def validation(self) -> ValidationConfig:
        return ValidationConfig(self.config.schema)

    def transformation(self) -> TransformationConfig:
        return TransformationConfig(self.config.schema, self.config.split)

    def training(self) -> TrainingConfig:
        c = self.config
        tags = {f"config.{name}.sha256": digest for name, digest in c.config_hashes.items()}
        tags["git_sha"] = _git_sha(c.project_root)
        return TrainingConfig(c.schema, c.model, c.mlflow, MappingProxyType(tags))

    def evaluation(self) -> EvaluationConfig:
        return EvaluationConfig(self.config.schema, self.config.promotion, self.config.mlflow)


def _git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
