"""
### ml_rollback: make an earlier model version the champion again

Trigger it from the UI with **version** set to the registered version to restore, or leave it
empty to restore the previous champion. The move is recorded in the registered model's
`champion_history` tag like any promotion. The **deploy** task then puts that version on
`deployment.target` by the same path as `ml_pipeline`'s deploy (rolling, verified, rolled back on failure);
the servers keep earlier bundles on disk, so going back is a pointer move, not a download: a new signed pointer
with a higher sequence, naming the earlier version and marked as a rollback.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task


@dag(
    dag_id="ml_rollback",
    description="Point the champion alias at an earlier model version and deploy it",
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
        from dags.stage_tasks import pipeline_config, task_result
        from include.pipeline import run_rollback

        return task_result(run_rollback(pipeline_config(), params["version"] or None))

    @task
    def deploy(rolled_back: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.pipeline import run_deploy

        return task_result(run_deploy(*stage_config(run_id, None), rolled_back["champion_after"], rollback=True))

    deploy(rollback())


ml_rollback()
