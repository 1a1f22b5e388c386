"""Fixtures of the component tests: a real SQLite MLflow store in tmp (datasets, configs: tests/support/frames.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.ml.config_file import MlflowConfig


@pytest.fixture
def mlflow_config(tmp_path: Path) -> MlflowConfig:
    return MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        artifact_location=(tmp_path / "mlartifacts").as_uri(), experiment_name="unit",
                        registered_model_name="unit-model", ui_url="http://127.0.0.1:5000")
