"""
### ml_monitor: drift and live quality of the champion's traffic

Runs daily on `airflow.monitor_schedule` of `config.yaml` (default 06:00 UTC, after the nightly retrain) and
when triggered. It reads what the prediction server captured for the current champion in the
`monitoring.period_hours` (params.yaml, default 24) before the run's time. **plan** fixes the champion version
and splits the period's capture days into partitions (one day each); **partial** (one mapped task per partition,
spread over the workers) reduces its days' capture files to a partial (sorted values, category counts, a row
sample: include/monitoring/partials.py), written whole into the run's `monitor-partials/`, so that a retry
overwrites it; **monitor** merges them (exactly: the numbers of one process reading every file), compares every
feature with the champion's own training data (found through its MLflow run) and its predictions with the champion's
predictions on its test set, joins the delayed labels of `monitoring.ground_truth_uri` for the live metrics,
and writes an HTML report and a JSON summary (its *Monitoring report* button; *MLflow run* opens the
`<experiment>-monitoring` run). It also compares what drives the champion's predictions on the traffic with
what drove them at evaluate (attribution drift: each input column's share of the mean |attribution|). When
features drift, or a column's attribution share does (`attribution:<column>`), its log names them with their
statistics, and **signal_drift** emits the `<model>-drift` Asset event, which starts `ml_pipeline` when
`airflow.retrain_on` is `drift` or `both`; with no drift it is *skipped* and nothing is emitted.
Too few captured rows is "not enough data", never drift. Thresholds: params.yaml `monitoring:`
(docs/monitoring.md). Parsing this file imports no ML library.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from dags.stage_tasks import drift_asset
from include.ml.configuration import project_config

PROJECT = project_config()
MODEL_NAME = PROJECT.mlflow.registered_model_name
DRIFT = drift_asset(MODEL_NAME)
MAX_PARTITIONS = 256  # include/monitoring/partials.py's bound (not imported: it loads pandas)


@dag(
    dag_id="ml_monitor",
    description="Captured traffic vs the champion's training data; live quality; a drift Asset event",
    doc_md=__doc__,
    schedule=PROJECT.airflow.monitor_schedule,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    tags=["ml", "monitoring", MODEL_NAME],
    default_args={
        "owner": "mlops",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_policy": ExceptionRetryPolicy(rules=[
            RetryRule(exception=["include.ml.exceptions.ConfigError", "include.ml.exceptions.MonitoringError",
                                 "include.ml.exceptions.StageInputError"],
                      action=RetryAction.FAIL,
                      reason="bad configuration, capture files or reference data: retrying cannot fix it"),
        ]),
    },
)
def ml_monitor() -> None:
    @task
    def plan(run_id: str | None = None, dag_run: Any = None) -> list[dict[str, Any]]:
        """The plan, once per partition: what each mapped partial task gets."""
        from dags.stage_tasks import stage_config, task_result
        from include.monitor_runs import run_monitor_plan

        planned = task_result(run_monitor_plan(*stage_config(run_id, None), dag_run.run_after))
        return [{"plan": planned["plan"], "partition": partition} for partition in planned["partitions"]]

    @task(max_active_tis_per_dagrun=MAX_PARTITIONS)
    def partial(work: dict[str, Any]) -> dict[str, Any]:
        from dags.stage_tasks import pipeline_config, task_result
        from include.monitor_runs import run_monitor_partial

        return task_result(run_monitor_partial(pipeline_config(), work["plan"], work["partition"]))

    @task
    def monitor(planned: list[dict[str, Any]], reduced: list[dict[str, Any]],
                run_id: str | None = None) -> dict[str, Any]:
        from dags.stage_tasks import stage_config, task_result
        from include.monitor_runs import run_monitor_merge

        return task_result(run_monitor_merge(*stage_config(run_id, None), planned[0]["plan"]))

    @task(outlets=[DRIFT])
    def signal_drift(monitored: dict[str, Any]) -> dict[str, Any]:
        from dags.stage_tasks import task_result
        from include.pipeline import drift_signal

        return task_result(drift_signal(monitored))  # skipped, so no Asset event, unless something drifted

    planned = plan()
    signal_drift(monitor(planned, partial.expand(work=planned)))


ml_monitor()
