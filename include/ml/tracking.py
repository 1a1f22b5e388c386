"""MLflow set-up shared by training and evaluation."""

from __future__ import annotations

import logging
import os

from include.ml.config_file import MlflowConfig

log = logging.getLogger(__name__)


def configure(config: MlflowConfig) -> str:
    """Point MLflow at the configured store; create the experiment if needed. Returns its id."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow draws a progress bar on stderr for every artifact download or upload: noise in main.py's output, and
    # ERROR lines in an Airflow task's log (Airflow logs a task's stderr at that level). Read at each transfer.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        log.info("creating MLflow experiment %r (artifacts: %s)", config.experiment_name,
                 config.artifact_location or "server default")
        return mlflow.create_experiment(config.experiment_name, artifact_location=config.artifact_location)
    if experiment.lifecycle_stage == "deleted":
        mlflow.tracking.MlflowClient().restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def run_url(config: MlflowConfig, experiment_id: str, mlflow_run_id: str) -> str:
    """The run's page in the MLflow UI."""
    return f"{config.ui_url}/#/experiments/{experiment_id}/runs/{mlflow_run_id}"
