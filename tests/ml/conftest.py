"""Tiny in-memory datasets and configs for component tests (a real SQLite MLflow store in tmp)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.ml.entities import (
    ColumnSpec, EvaluationConfig, MlflowConfig, ModelConfig, PromotionConfig, SchemaConfig, TrainingConfig,
)

FAST = {  # small models keep the tests quick
    "elasticnet": {},
    "random_forest": {"n_estimators": 5},
    "hist_gradient_boosting": {"max_iter": 10},
}


def schema(task: str) -> SchemaConfig:
    target = ColumnSpec("y", "float") if task == "regression" else ColumnSpec("y", "category", allowed=("a", "b", "c"))
    return SchemaConfig(task, "y", 1, (ColumnSpec("x1", "float", nullable=True), ColumnSpec("x2", "float"),
                                       ColumnSpec("kind", "category", allowed=("p", "q")), target))


def dataset(task: str, rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    kind = rng.choice(["p", "q"], rows)
    signal = 2 * x1 - x2 + (kind == "p")
    y = signal + rng.normal(scale=0.1, size=rows) if task == "regression" else \
        np.select([signal < -0.5, signal < 1.0], ["a", "b"], "c")
    x1[::10] = np.nan
    return pd.DataFrame({"x1": x1, "x2": x2, "kind": kind, "y": y})


@pytest.fixture
def mlflow_config(tmp_path: Path) -> MlflowConfig:
    return MlflowConfig(f"sqlite:///{tmp_path}/mlflow.db", (tmp_path / "mlartifacts").as_uri(), "unit", "unit-model",
                        "http://127.0.0.1:5000")


def training_config(task: str, family: str, mlflow_config: MlflowConfig, **hyper: Any) -> TrainingConfig:
    return TrainingConfig(schema(task), ModelConfig(family, 0, MappingProxyType({**FAST[family], **hyper})),
                          mlflow_config, MappingProxyType({"git_sha": "test"}))


def evaluation_config(task: str, mlflow_config: MlflowConfig, margin: float = 0.001) -> EvaluationConfig:
    metric, higher = ("rmse", False) if task == "regression" else ("f1_macro", True)
    return EvaluationConfig(schema(task), PromotionConfig(metric, margin, higher), mlflow_config)
