"""The champion's own reference data, found through its MLflow run.

Training tags the run with `pipeline_run_id`; that run's artifacts hold the exact training split
(<artifacts_root>/<pipeline run id>/transform/train.parquet) and the test split the gate scored. Without the
split (another machine, pruned artifacts) the run's ingested snapshot (ingest/data.parquet) is the reference.
The predictions' reference is the champion's own predictions on its test split, from the model loaded with the
registry's safe loader; its test-set metrics are the ones evaluation logged on the run (`test_<metric>`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml import registry
from include.ml.components.training import split_xy
from include.ml.exceptions import StageInputError
from include.ml.schema_file import SchemaConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    model_name: str
    version: str
    mlflow_run_id: str
    pipeline_run_id: str
    source: str  # the file the reference rows come from
    features: pd.DataFrame
    predictions: pd.Series  # the champion's predictions on its test split
    test_metrics: dict[str, float]
    classes: tuple[str, ...] = ()  # a classifier's classes as text (what capture names its probabilities by)
    model: Any = field(default=None, repr=False, compare=False)  # the champion's fitted sklearn Pipeline


def load(model_name: str, version: str, schema: SchemaConfig, artifacts_root: Path) -> Reference:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    model_version = client.get_model_version(model_name, version)
    run = client.get_run(model_version.run_id)
    pipeline_run_id = run.data.tags.get("pipeline_run_id")
    if not pipeline_run_id:
        raise StageInputError(f"{model_name} v{version}: its MLflow run {run.info.run_id} has no pipeline_run_id tag, "
                              "so its training data cannot be found")
    run_dir = artifacts_root / pipeline_run_id
    source = next((p for p in (run_dir / "transform" / "train.parquet", run_dir / "ingest" / "data.parquet")
                   if p.is_file()), None)
    if source is None:
        raise StageInputError(f"{model_name} v{version}: neither the training split nor the snapshot of its "
                              f"pipeline run {pipeline_run_id} is under {run_dir}")
    features, _ = split_xy(pd.read_parquet(source), schema)
    test_path = run_dir / "transform" / "test.parquet"
    scored = split_xy(pd.read_parquet(test_path), schema)[0] if test_path.is_file() else features
    model = registry.load_model(f"models:/{model_name}/{version}")
    predictions = pd.Series(model.predict(scored), name="prediction")
    metrics = {k.removeprefix("test_"): float(v) for k, v in run.data.metrics.items()
               if k.startswith("test_") and k != "test_rows"}
    log.info("reference: %s v%s, %d rows from %s, predictions on %d test rows", model_name, version, len(features),
             source, len(predictions))
    classes = tuple(str(c) for c in model.classes_) if schema.task == "classification" else ()
    return Reference(model_name, version, run.info.run_id, pipeline_run_id, str(source), features, predictions,
                     metrics, classes, model)
