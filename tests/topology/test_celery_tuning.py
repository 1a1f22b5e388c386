"""The tune stage spread over the production topology's two Celery workers: one Optuna study in a PostgreSQL
database of its own (MLOPS_TUNING_STORAGE, tests/support/stacks.py), two mapped tune_worker tasks running trials
against it at once, and tune_collect logging the best on the parent MLflow run."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest

from include.ml.artifacts import safe_run_id
from tests.support.registry import Registry
from tests.support.stacks import CeleryStack, pg_url

pytestmark = pytest.mark.integration

DAG_ID = "ml_pipeline"
TRIALS, WORKERS = 16, 2
RUN_TIMEOUT = 300


def query(database: str, sql: str, *params: Any) -> list[tuple]:
    with psycopg2.connect(pg_url(database)) as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    conn.close()
    return rows


@pytest.fixture(scope="module")
def stack(celery_stack: CeleryStack) -> CeleryStack:
    """The stack with ml_pipeline unpaused and idle: unpausing it first makes the run of its latest nightly
    interval, which would hold this test's run queued (max_active_runs 1) when this file runs alone."""
    client = celery_stack.client
    client.wait_for_dag(DAG_ID, timeout=120)
    client.unpause(DAG_ID)
    unpaused, deadline = time.monotonic(), time.monotonic() + 900
    while time.monotonic() < deadline:
        runs = client.get(f"dags/{DAG_ID}/dagRuns")["dag_runs"]
        scheduled = any(run["run_type"] == "scheduled" for run in runs)
        if all(run["state"] in ("success", "failed") for run in runs) and (scheduled or
                                                                           time.monotonic() - unpaused > 15):
            return celery_stack
        time.sleep(2)
    pytest.fail(f"{DAG_ID} still busy with earlier runs after 900 s", pytrace=False)


def test_two_workers_share_one_study_in_postgres(stack: CeleryStack) -> None:
    client = stack.client
    started = time.monotonic()
    run_id = client.trigger(DAG_ID, conf={"model_family": "elasticnet", "tune_trials": TRIALS,
                                          "tune_workers": WORKERS}, note="tests/topology: tuning on two workers")[
        "dag_run_id"]
    client.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
    stack.timings["tuning of 16 trials on 2 workers, trigger to success (s)"] = time.monotonic() - started

    tis = client.task_instances(DAG_ID, run_id)
    workers = sorted((ti for ti in tis if ti["task_id"] == "tune_worker"), key=lambda ti: ti["map_index"])
    assert [(ti["map_index"], ti["state"]) for ti in workers] == [(0, "success"), (1, "success")]
    hosts = {ti["hostname"] for ti in workers}
    assert hosts == set(stack.workers.values()), hosts  # one on each Celery worker
    done = {ti["map_index"]: client.get(f"dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/tune_worker"
                                        "/xcomEntries/return_value", deserialize="true", map_index=ti["map_index"])[
        "value"] for ti in workers}
    assert all(ran["trials"] >= 1 for ran in done.values()), done  # both ran trials
    collected = client.xcom(DAG_ID, run_id, "tune_collect")
    assert (collected["trials"], collected["workers"]) == (TRIALS, WORKERS), collected

    # One study, in the tuning database (not Airflow's, not MLflow's), holding every trial of the budget.
    name = f"tune-{safe_run_id(run_id)}"
    rows = query(stack.databases["tuning"], "SELECT s.study_name, count(t.trial_id) FROM studies s JOIN trials t "
                 "ON t.study_id = s.study_id WHERE s.study_name = %s GROUP BY 1", name)
    assert len(rows) == 1 and rows[0][1] >= TRIALS, rows  # (and at most one dropped over-budget trial a worker)
    assert not query(stack.databases["mlflow"], "SELECT 1 FROM information_schema.tables WHERE table_name = 'studies'")

    # Each trial is a nested run under the parent, tagged with the worker and the Celery node that ran it; the
    # parent holds the best trial.
    runs = Registry(stack.mlflow_url).pipeline_runs(run_id, "tune")
    parent = next(run for run in runs if run.info.run_id == collected["mlflow_run_id"])
    trials = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == TRIALS
    assert {(run.data.tags["tune_worker"], run.data.tags["tune_host"]) for run in trials} == \
        {(str(ti["map_index"]), ti["hostname"]) for ti in workers}
    assert parent.info.status == "FINISHED"
    assert parent.data.params["best.trial"] == str(collected["best_trial"])
    assert parent.data.metrics["best_cv_rmse_mean"] == pytest.approx(collected["cv_mean"])
    best = min((run for run in trials if "cv_rmse_mean" in run.data.metrics),
               key=lambda run: run.data.metrics["cv_rmse_mean"])
    assert best.data.tags["trial"] == str(collected["best_trial"])
    train = client.xcom(DAG_ID, run_id, "train")
    assert train["family"] == "elasticnet"
