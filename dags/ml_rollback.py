"""
### ml_rollback: make an earlier model version the champion again

Trigger it from the UI with **version** set to the registered version to restore, or leave it
empty to restore the previous champion. The move is recorded in the registered model's
`champion_history` tag like any promotion. The **deploy** task then puts that version on
`deployment.target` by the same path as `ml_pipeline`'s deploy (rolling, verified, rolled back on failure);
the servers keep earlier bundles on disk, so going back is a pointer move, not a download.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task


@dag(
    dag_id="ml_rollback",
    description="Point the champion alias at an earlier model version",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "rollback"],
    default_args={"owner": "mlops", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "version": Param(None, type=["null", "string"], pattern=r"^[0-9]*$",
                         description="Registered model version to restore; empty = the previous champion"),
    },
)
def ml_rollback() -> None:
    @task
    def rollback(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.ml import registry, tracking
        from include.ml.configuration import ConfigurationManager

        mlflow_config = ConfigurationManager().config.mlflow
        tracking.configure(mlflow_config)
        name = mlflow_config.registered_model_name
        before = registry.champion_version(name)
        after = registry.rollback(name, params.get("version") or None)
        return {"model_name": name, "champion_before": before, "champion_after": after}

    @task
    def deploy(rolled_back: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        from dataclasses import asdict

        from airflow.sdk.exceptions import AirflowSkipException

        from include.ml.artifacts import safe_run_id
        from include.ml.components.deployment import Skipped
        from include.ml.configuration import ConfigurationManager
        from include.ml.pipeline import run_deploy

        result = run_deploy(ConfigurationManager(), safe_run_id(run_id), rolled_back["champion_after"])
        if isinstance(result, Skipped):
            raise AirflowSkipException(result.summary())
        return asdict(result)

    deploy(rollback())


ml_rollback()
