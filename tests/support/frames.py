"""Tiny in-memory datasets and stage configs for the component tests of tests/ml (the `mlflow_config` fixture of
tests/ml/conftest.py gives them a real SQLite MLflow store in tmp)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from include.ml.entities import (
    ColumnSpec,
    EvaluationConfig,
    MlflowConfig,
    ModelConfig,
    PromotionConfig,
    SchemaConfig,
    SearchParam,
    SearchPlan,
    TrainingConfig,
    TuningJob,
)

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


def training_config(task: str, family: str, mlflow_config: MlflowConfig, **hyper: Any) -> TrainingConfig:
    model = ModelConfig(family=family, random_state=0, hyperparameters={**FAST[family], **hyper})
    return TrainingConfig(schema(task), model, mlflow_config, MappingProxyType({"git_sha": "test"}))


def evaluation_config(task: str, mlflow_config: MlflowConfig, margin: float = 0.001) -> EvaluationConfig:
    metric = "rmse" if task == "regression" else "f1_macro"
    return EvaluationConfig(schema(task), PromotionConfig(metric=metric, min_improvement=margin), mlflow_config)


def tuning_config(task: str, mlflow_config: MlflowConfig, spaces: dict[str, dict[str, dict[str, Any]]],
                  **tuning: Any) -> TuningJob:
    """A tiny search (3 trials, 2 folds unless given) over `spaces`: family -> parameter -> range as in params.yaml;
    the first family is the configured model.family."""
    settings = SearchPlan(**{"n_trials": 3, "cv_folds": 2, "seed": 0, **tuning})
    searched = {family: {name: SearchParam(**spec) for name, spec in space.items()} for family, space in spaces.items()}
    return TuningJob(training_config(task, next(iter(spaces)), mlflow_config), settings,
                             "rmse" if task == "regression" else "f1_macro", searched)


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
