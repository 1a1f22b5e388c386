"""A real monitor run (include/monitoring/monitor.py) whose feature name and category values are markup.

A drafted schema takes its column names from a data file's header, and an open category (no `allowed`) takes any
value from traffic: so `feature` names a category column of the schema, a champion is trained on it (a tiny
regression in its own SQLite MLflow store, as tests/ml/test_monitoring.py's champion) and the captured traffic
holds `value` in it. The monitor writes report.html and summary.json into `output_dir`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType

import mlflow

from include.ml import registry
from include.ml.components.training import train
from include.ml.components.transformation import split
from include.ml.config_file import MlflowConfig, MonitoringSources
from include.ml.entities import MonitorJob, TrainingConfig, TransformationConfig
from include.ml.params_file import ModelConfig, MonitoringPolicy, PromotionConfig, SplitConfig
from include.ml.schema_file import ColumnSpec, SchemaConfig
from include.monitoring.monitor import MonitorResult, monitor
from tests.support.capture import write_capture
from tests.support.frames import dataset

END = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)


def hostile_monitor_run(root: Path, feature: str, value: str, output_dir: Path) -> MonitorResult:
    schema = SchemaConfig(task="regression", target="y", min_rows=1, columns=(
        ColumnSpec(name="x1", dtype="float", nullable=True), ColumnSpec(name="x2", dtype="float"),
        ColumnSpec(name=feature, dtype="category"), ColumnSpec(name="y", dtype="float")))
    mlflow_config = MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                 artifact_location=(root / "mlartifacts").as_uri(), experiment_name="hostile",
                                 registered_model_name="hostile-model")
    artifacts_root = root / "artifacts"
    frame = dataset("regression", rows=400).rename(columns={"kind": feature})
    frame[feature] = frame[feature].replace({"q": value})
    train_frame, test_frame = split(frame, TransformationConfig(schema, SplitConfig()))
    (artifacts_root / "run-1" / "transform").mkdir(parents=True)
    train_frame.to_parquet(artifacts_root / "run-1" / "transform" / "train.parquet")
    test_frame.to_parquet(artifacts_root / "run-1" / "transform" / "test.parquet")
    previous = mlflow.get_tracking_uri()
    try:
        model = ModelConfig(family="elasticnet", random_state=0, hyperparameters={"alpha": 0.001})
        trained = train(train_frame, TrainingConfig(schema, model, mlflow_config, MappingProxyType({"git_sha": "t"})),
                        "run-1", root / "train", dataset_source="memory")
        registry.promote("hostile-model", registry.register("hostile-model", trained.model_uri,
                                                            trained.mlflow_run_id), "test")
        live = dataset("regression", rows=300, seed=1).rename(columns={"kind": feature}).drop(columns=["y"])
        live[feature] = live[feature].replace({"p": value, "q": value})  # the mix moves: drift of `feature`
        champion = registry.load_model(trained.model_uri)
        write_capture(root / "capture", "hostile-model", "1", live, champion.predict(live), END - timedelta(hours=2))
        job = MonitorJob(schema, PromotionConfig(metric="rmse"), mlflow_config,
                         MonitoringSources(capture_dir=str(root / "capture")), MonitoringPolicy(min_rows=50),
                         artifacts_root)
        result = monitor(job, "hostile-monitor", END, output_dir)
    finally:
        mlflow.set_tracking_uri(previous)
    assert result is not None
    return result
