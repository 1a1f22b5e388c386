"""Tiny in-memory datasets and stage configs for the component tests of tests/ml (the `mlflow_config` fixture of
tests/ml/conftest.py gives them a real SQLite MLflow store in tmp)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from include.ml.config_file import MlflowConfig
from include.ml.entities import EvaluationConfig, TrainingConfig, TuningJob
from include.ml.params_file import ModelConfig, PromotionConfig, SearchParam, SearchPlan
from include.ml.schema_file import ColumnSpec, SchemaConfig

FAST = {  # small models keep the tests quick
    "elasticnet": {},
    "random_forest": {"n_estimators": 5},
    "extra_trees": {"n_estimators": 5},
    "hist_gradient_boosting": {"max_iter": 10},
}


def schema(task: str) -> SchemaConfig:
    target = ColumnSpec(name="y", dtype="float") if task == "regression" else \
        ColumnSpec(name="y", dtype="category", allowed=("a", "b", "c"))
    return SchemaConfig(task=task, target="y", min_rows=1, columns=(
        ColumnSpec(name="x1", dtype="float", nullable=True), ColumnSpec(name="x2", dtype="float"),
        ColumnSpec(name="kind", dtype="category", allowed=("p", "q")), target))


def dataset(task: str, rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    kind = rng.choice(["p", "q"], rows)
    signal = 2 * x1 - x2 + (kind == "p")
    y = signal + rng.normal(scale=0.1, size=rows) if task == "regression" else \
        np.select([signal < -0.5, signal < 1.0], ["a", "b"], "c")
    x1[::10] = np.nan
    return pd.DataFrame({"x1": x1, "x2": x2, "kind": kind, "y": y})


def noisy_dataset(rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    """`schema("classification")` rows whose class is drawn at random from a softmax of the features: no model can
    be sure, so a forest of pure leaves is over-confident (what calibration mends)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    kind = rng.choice(["p", "q"], rows)
    logits = np.column_stack([x1, x2, 0.5 * (kind == "p")])
    shares = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    drawn = (rng.random((rows, 1)) > shares.cumsum(axis=1)).sum(axis=1)
    y = np.array(["a", "b", "c"])[np.minimum(drawn, 2)]
    x1[::10] = np.nan
    return pd.DataFrame({"x1": x1, "x2": x2, "kind": kind, "y": y})


def imbalanced_dataset(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """`schema("classification")` rows of two classes, "b" the rare one (about 11 %), drawn from a logistic model of
    x1 and x2."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    kind = rng.choice(["p", "q"], rows)
    rare = rng.random(rows) < 1 / (1 + np.exp(-(1.5 * x1 - x2 - 3)))
    return pd.DataFrame({"x1": x1, "x2": x2, "kind": kind, "y": np.where(rare, "b", "a")})


def pipeline_for(schema: SchemaConfig, family: str, hyperparameters: dict[str, Any], seed: int = 0,
                 calibration: str = "none") -> Any:
    """The unfitted pipeline training builds for `schema` and `family` (preprocessing included; with
    `calibration`, the classifier inside a CalibratedClassifierCV)."""
    from include.ml.components.training import build_pipeline

    model = ModelConfig(family=family, random_state=seed, hyperparameters=hyperparameters, calibration=calibration)
    unused = MlflowConfig(experiment_name="unused", registered_model_name="unused")
    return build_pipeline(TrainingConfig(schema, model, unused, MappingProxyType({}), calibration=calibration))


def training_config(task: str, family: str, mlflow_config: MlflowConfig, calibration: str = "none",
                    **hyper: Any) -> TrainingConfig:
    model = ModelConfig(family=family, random_state=0, hyperparameters={**FAST[family], **hyper},
                        calibration=calibration)
    return TrainingConfig(schema(task), model, mlflow_config, MappingProxyType({"git_sha": "test"}),
                          calibration=calibration)


def evaluation_config(task: str, mlflow_config: MlflowConfig, margin: float = 0.001) -> EvaluationConfig:
    metric = "rmse" if task == "regression" else "f1_macro"
    return EvaluationConfig(schema(task), PromotionConfig(metric=metric, min_improvement=margin), mlflow_config)


def tuning_config(task: str, mlflow_config: MlflowConfig, spaces: dict[str, dict[str, dict[str, Any]]],
                  family: str | None = None, hyperparameters: dict[str, Any] | None = None,
                  **tuning: Any) -> TuningJob:
    """A tiny search (3 trials, 2 folds unless given) over `spaces`: family -> parameter -> range as in params.yaml.
    The configured model (trial 0 when its family is searched) is `family` (default: the first of `spaces`) with
    FAST's hyperparameters, or `hyperparameters` when given."""
    settings = SearchPlan(**{"n_trials": 3, "cv_folds": 2, "seed": 0, **tuning})
    searched = {family: {name: SearchParam(**spec) for name, spec in space.items()} for family, space in spaces.items()}
    training = training_config(task, family or next(iter(spaces)), mlflow_config)
    if hyperparameters is not None:
        training = replace(training, model=ModelConfig(family=training.model.family, random_state=0,
                                                       hyperparameters=hyperparameters))
    return TuningJob(training, settings, "rmse" if task == "regression" else "f1_macro", searched)


def mixed_schema(task: str, **target: Any) -> SchemaConfig:
    """Every dtype and role: an id, a datetime, an ordinal, an open high-cardinality category, a listed category, a
    number with gaps, free text to ignore; the target `y` (`target`: e.g. missing="error")."""
    label = ColumnSpec(name="y", dtype="float") if task == "regression" else \
        ColumnSpec(name="y", dtype="category", allowed=("a", "b", "c"))
    return SchemaConfig(task=task, target={"name": "y", **target}, min_rows=1, columns=(
        ColumnSpec(name="row_id", dtype="int", role="id"),
        ColumnSpec(name="when", dtype="datetime", format="%Y-%m-%d %H:%M:%S", min="2020-01-01", max="2021-12-31"),
        ColumnSpec(name="grade", dtype="ordinal", categories=("low", "mid", "high")),
        ColumnSpec(name="plate", dtype="category", nullable=True),
        ColumnSpec(name="kind", dtype="category", allowed=("p", "q")),
        ColumnSpec(name="x1", dtype="float", nullable=True),
        ColumnSpec(name="note", dtype="string", role="ignore"),
        label))


def mixed_dataset(task: str, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """mixed_schema's rows: `y` depends on the hour of `when`, the grade's order, the plate and x1."""
    rng = np.random.default_rng(seed)
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 700 * 24, rows), unit="h")
    grade = rng.choice(["low", "mid", "high"], rows)
    plates = np.array([f"P{i:03d}" for i in rng.integers(0, 60, rows)], dtype=object)
    x1 = rng.normal(size=rows)
    signal = (when.hour.to_numpy() > 12) + np.select([grade == "low", grade == "mid"], [0, 1], 2) + x1 \
        + np.array([int(p[1:]) % 3 for p in plates]) / 2
    plates[::17] = None
    x1[::11] = np.nan
    y = signal + rng.normal(scale=0.2, size=rows) if task == "regression" else \
        np.select([signal < 1.5, signal < 3], ["a", "b"], "c")
    return pd.DataFrame({"row_id": np.arange(rows), "when": when.strftime("%Y-%m-%d %H:%M:%S"), "grade": grade,
                         "plate": plates, "kind": rng.choice(["p", "q"], rows), "x1": x1,
                         "note": [f"free text {i}" for i in range(rows)], "y": y})


def flights_like(rows: int, seed: int = 0) -> pd.DataFrame:
    """A nycflights13-like table: a constant year, clock fields, hhmm times, a timestamp string, a tail number of
    many values, a 104-value airport code, missing features and targets."""
    rng = np.random.default_rng(seed)
    sched = (pd.Timestamp("2013-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), unit="D")
             + pd.to_timedelta(rng.integers(5 * 60, 23 * 60, rows), unit="min")).floor("5min")
    dest = rng.choice([f"{a}{b}X" for a in "ABCDEFGHIJKLM" for b in "ABCDEFGH"], rows)
    dep_delay = (rng.gamma(0.6, 25, rows) - 8 + 12 * (sched.hour > 16)).round()
    cancelled = rng.random(rows) < 0.03
    dep_time = (sched + pd.to_timedelta(dep_delay, unit="min"))
    frame = pd.DataFrame({
        "year": 2013, "month": sched.month, "day": sched.day,
        "dep_time": np.where(cancelled, np.nan, dep_time.hour * 100 + dep_time.minute),
        "sched_dep_time": sched.hour * 100 + sched.minute, "dep_delay": np.where(cancelled, np.nan, dep_delay),
        "carrier": rng.choice(["UA", "B6", "EV", "DL", "AA", "MQ"], rows), "flight": rng.integers(1, 8500, rows),
        "tailnum": np.where(cancelled & (rng.random(rows) < 0.5), None,
                            [f"N{i}" for i in rng.integers(100, 1500, rows)]),
        "origin": rng.choice(["EWR", "JFK", "LGA"], rows), "dest": dest, "distance": rng.integers(90, 4983, rows),
        "hour": sched.hour, "minute": sched.minute, "time_hour": sched.floor("h").strftime("%Y-%m-%d %H:%M:%S"),
    })
    frame["arr_delay"] = np.where(cancelled, np.nan, (dep_delay + rng.normal(-5, 12, rows)).round())
    return frame
