"""What the DAG files share: a task's configuration and its return value. Not a DAG (.airflowignore).

Each task of ml_pipeline and ml_rollback is `task_result(run_<stage>(*stage_config(run_id, params)))`:
the pipeline's typed result becomes the task's small XCom dict, and `Skipped` a skipped task whose log
says why.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Asset
    from airflow.sdk.definitions.retry_policy import RetryRule

    from include.ml.configuration import ConfigurationManager
    from include.pipeline import StageResult


def default_args(execution_timeout: timedelta, fail_at_once: list[RetryRule]) -> dict[str, Any]:
    """The tasks' defaults of ml_pipeline and ml_batch_predict: two retries with exponential backoff, except for
    the exceptions of `fail_at_once`. MLOPS_RETRY_DELAY_SECONDS shortens the first wait, e.g. for tests of the
    retry path."""
    from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy

    return {"owner": "mlops", "retries": 2,
            "retry_delay": timedelta(seconds=float(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "30"))),
            "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=10),
            "execution_timeout": execution_timeout, "retry_policy": ExceptionRetryPolicy(rules=fail_at_once)}


def drift_asset(model_name: str) -> Asset:
    """What ml_monitor emits when the model's inputs drift, and what ml_pipeline may be scheduled on."""
    from airflow.sdk import Asset

    return Asset(name=f"{model_name}-drift", uri=f"x-mlops://drift/{model_name}")


def candidate_asset(model_name: str) -> Asset:
    """What ml_pipeline emits when evaluate made a release candidate (release.strategy: progressive), and what
    ml_release is scheduled on; the event's extra names the version."""
    from airflow.sdk import Asset

    return Asset(name=f"{model_name}-candidate", uri=f"x-mlops://candidates/{model_name}")


def stage_config(run_id: str, params: dict[str, Any] | None) -> tuple[ConfigurationManager, str]:
    """The configuration with this run's overrides (trigger form), and the path-safe run id."""
    from include.ml.artifacts import safe_run_id

    return pipeline_config(params), safe_run_id(run_id)


def pipeline_config(params: dict[str, Any] | None = None) -> ConfigurationManager:
    """The configuration of $MLOPS_CONFIG_DIR, with the `source`, `model_family`, `tune`, `tune_trials` and
    `tune_workers` of a trigger form."""
    from include.ml.configuration import ConfigurationManager

    _mlflow_login_from_connection()
    # Saving or loading a model, skops (MLflow's sklearn format) looks objects up in every loaded module
    # and so trips ~1000 of Airflow's deprecated-import shims, each a warning line in the task log.
    # (Set here, in the task process: filters set while the DAG file is parsed do not outlive the parse.)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")
    # Great Expectations logs ~200 INFO lines about its own API docs while it is imported.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    params = params or {}
    return ConfigurationManager(source_uri=params.get("source") or None,
                                model_family=params.get("model_family") or None, tune=params.get("tune"),
                                tune_trials=params.get("tune_trials"), tune_workers=params.get("tune_workers"))


MLFLOW_CONN_ID = "mlflow_default"


def _mlflow_login_from_connection() -> None:
    """An Airflow connection `mlflow_default` (login, password) is how tasks log in to an MLflow server with basic
    auth; without it, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the environment (docs/topology.md).
    MLflow's client reads those variables, so the pipeline itself never sees Airflow."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(MLFLOW_CONN_ID)
    except AirflowNotFoundException:
        return
    if connection.login:
        os.environ["MLFLOW_TRACKING_USERNAME"] = connection.login
        os.environ["MLFLOW_TRACKING_PASSWORD"] = connection.password or ""


def task_result(result: StageResult) -> dict[str, Any]:
    """The result's XCom form; a stage that had nothing to do is shown as skipped, with the reason in the log."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.pipeline import Skipped

    if isinstance(result, Skipped):
        raise AirflowSkipException(result.summary())
    return result.xcom()
