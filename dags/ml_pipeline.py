"""
### ml_pipeline: train, evaluate, register and deploy the model

One task per stage of `include/ml/pipeline.py`:
**ingest → validate → transform → train → evaluate → deploy → verify**. Each task calls
`run_<stage>(cm, run_id)` with this DAG run's id made path-safe, so a run writes
`<artifacts_root>/<run id>/<stage>/` exactly as `python main.py --run-id <run id>` would,
and any task can be cleared and re-run alone. Tasks pass each other only small
summaries (paths, counts, MLflow ids, the model version, metrics) through XCom.

**Params** (*Trigger DAG* → run configuration)

* `source`: data source for this run (local path, `http(s)://` or `s3://` URI of a CSV or zip);
  empty = `data_source.uri` from `include/config/config.yaml`.
* `model_family`: train this family instead of `model.family` from `params.yaml` (with the estimator's
  default hyperparameters: the YAML's belong to the configured family); empty = `params.yaml`.
* `force_promote`: make the new model the champion even if the champion/challenger gate says no.

**Deploy** runs only when evaluation promoted a new champion (otherwise it is *skipped*, and its log says
why): it puts the champion on `deployment.target` from `config.yaml` — `local`, the prediction server of
`make up` on 127.0.0.1:8000, or `ec2`, the fleet refreshed one batch at a time through S3 and SSM, rolled
back if any server fails. **Verify** then sends the model's input example to every server and checks the
answers equal the registered model's own predictions.

**Failures**: a data-validation failure, a configuration error or a rolled-back deploy fails its task
at once (retrying cannot fix the data; a person should look at a failed rollout); anything else is
retried with exponential backoff.

**Links and lineage**: validate has a *Data Docs* button, train and evaluate an *MLflow run* button
(`plugins/mlops_links.py`); the Assets view shows source → snapshot → registered model.

Parsing this file imports no ML library: they load inside the tasks.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import yaml
from airflow.sdk import Asset, Param, dag, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from include.ml.models import FAMILIES  # light: names only, estimators are imported when built

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCHEDULE = "0 2 * * *"


def _config_yaml() -> dict[str, Any]:
    """config.yaml as plain data: a cheap read at parse time (it is validated when tasks run)."""
    config_dir = Path(os.environ.get("MLOPS_CONFIG_DIR") or PROJECT_ROOT / "include" / "config")
    with open(config_dir / "config.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _assets(config: dict[str, Any]) -> tuple[Asset, Asset, Asset]:
    """Lineage shown in the UI: the configured source -> the run's snapshot -> the registered model."""
    uri = os.environ.get("MLOPS_SOURCE_URI") or config.get("data_source", {}).get("uri", "")
    if "://" not in uri:
        uri = (PROJECT_ROOT / uri).resolve().as_uri()
    model = config.get("mlflow", {}).get("registered_model_name", "model")
    return (Asset(name=f"{model}-source", uri=uri),
            Asset(name=f"{model}-snapshot", uri=f"x-mlops://snapshots/{model}"),
            Asset(name=f"{model}-registered-model", uri=f"x-mlops://models/{model}"))


CONFIG = _config_yaml()
SOURCE, SNAPSHOT, MODEL = _assets(CONFIG)


def _stage(run_id: str, params: dict[str, Any]) -> tuple[Any, str]:
    """The ConfigurationManager (with this run's overrides) and the path-safe run id for a task."""
    from include.ml.artifacts import safe_run_id
    from include.ml.configuration import ConfigurationManager

    # Saving or loading a model, skops (MLflow's sklearn format) looks objects up in every loaded module
    # and so trips ~1000 of Airflow's deprecated-import shims, each a warning line in the task log.
    # (Set here, in the task process: filters set while the DAG file is parsed do not outlive the parse.)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")
    # Great Expectations logs ~200 INFO lines about its own API docs while it is imported.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    cm = ConfigurationManager(source_uri=params.get("source") or None, model_family=params.get("model_family") or None)
    return cm, safe_run_id(run_id)


def _skip_or_return(result: Any) -> dict[str, Any]:
    """A stage that had nothing to do is shown as skipped in the UI, with the reason in the log."""
    from dataclasses import asdict

    from airflow.sdk.exceptions import AirflowSkipException

    from include.ml.components.deployment import Skipped

    if isinstance(result, Skipped):
        raise AirflowSkipException(result.summary())
    return asdict(result)


def _run_url(cm: Any, result: Any) -> str:
    from include.ml.tracking import run_url

    return run_url(cm.config.mlflow, result.mlflow_run_id)


@dag(
    dag_id="ml_pipeline",
    description="ingest -> validate -> transform -> train -> evaluate -> deploy -> verify (include/ml/pipeline.py)",
    doc_md=__doc__,
    schedule=CONFIG.get("airflow", {}).get("schedule", DEFAULT_SCHEDULE),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["ml", "training", CONFIG.get("mlflow", {}).get("registered_model_name", "model")],
    default_args={
        "owner": "mlops",
        "retries": 2,
        # MLOPS_RETRY_DELAY_SECONDS shortens the first wait, e.g. for tests of the retry path.
        "retry_delay": timedelta(seconds=float(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "30"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(minutes=45),
        "retry_policy": ExceptionRetryPolicy(rules=[
            RetryRule(exception=["include.ml.exceptions.DataValidationError", "include.ml.exceptions.ConfigError"],
                      action=RetryAction.FAIL, reason="bad data or configuration: retrying cannot fix it"),
            # A failed rollout has already put every server back; a person should look before another try.
            RetryRule(exception=["include.ml.exceptions.DeploymentError"],
                      action=RetryAction.FAIL, reason="deploy failed and was rolled back"),
        ]),
    },
    params={
        "source": Param(None, type=["null", "string"],
                        description="Data source URI for this run; empty = data_source.uri from config.yaml"),
        "model_family": Param(None, type=["null", "string"], enum=[None, *FAMILIES],
                              description="Model family for this run, with default hyperparameters; "
                                          "empty = model.family from params.yaml"),
        "force_promote": Param(False, type="boolean",
                               description="Promote the new model even if the champion/challenger gate says no"),
    },
)
def ml_pipeline() -> None:
    @task(inlets=[SOURCE], outlets=[SNAPSHOT])
    def ingest(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_ingest

        cm, rid = _stage(run_id, params)
        result = run_ingest(cm, rid)
        return {"run_id": rid, "source_uri": result.source_uri, "data_path": result.data_path,
                "rows": result.rows, "columns": result.columns}

    @task(inlets=[SNAPSHOT])
    def validate(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_validate

        result = run_validate(*_stage(run_id, params))  # DataValidationError: failed at once by the retry policy
        return {"success": result.success, "passed": result.passed, "evaluated": result.evaluated,
                "rows": result.rows, "data_docs": result.data_docs}  # plugins/mlops_links.py links it

    @task
    def transform(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_transform

        result = run_transform(*_stage(run_id, params))
        return {"train_path": result.train_path, "test_path": result.test_path,
                "train_rows": result.train_rows, "test_rows": result.test_rows}

    @task
    def train(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_train

        cm, rid = _stage(run_id, params)
        result = run_train(cm, rid)
        return {"mlflow_run_id": result.mlflow_run_id, "mlflow_run_url": _run_url(cm, result),
                "model_uri": result.model_uri, "family": result.family,
                "estimator": result.estimator, "train_rows": result.train_rows,
                "fit_seconds": round(result.fit_seconds, 3)}

    @task(outlets=[MODEL])
    def evaluate(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_evaluate

        cm, rid = _stage(run_id, params)
        result = run_evaluate(cm, rid, force_promote=bool(params.get("force_promote")))
        return {"model_name": result.model_name, "version": str(result.version),
                "mlflow_run_id": result.mlflow_run_id, "mlflow_run_url": _run_url(cm, result), "promoted": result.decision.promoted,
                "gate_reason": result.decision.reason, "champion_version": str(result.champion_version),
                "metrics": {name: float(value) for name, value in result.metrics.items()},
                "champion_metrics": {name: float(value) for name, value in result.champion_metrics.items()}}

    @task
    def deploy(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_deploy

        return _skip_or_return(run_deploy(*_stage(run_id, params)))

    @task
    def verify(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml.pipeline import run_verify

        return _skip_or_return(run_verify(*_stage(run_id, params)))

    ingest() >> validate() >> transform() >> train() >> evaluate() >> deploy() >> verify()

ml_pipeline()
