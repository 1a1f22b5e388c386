"""
### ml_rollback: make an earlier model version the champion again

Trigger it from the UI with **version** set to the registered version to restore, or leave it
empty to restore the previous champion. The move is recorded in the registered model's
`champion_history` tag like any promotion. (Once deployment exists, a deploy task follows.)
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

    rollback()


ml_rollback()
