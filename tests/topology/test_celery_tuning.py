"""The tune stage spread over the production topology's two Celery workers: one Optuna study in a PostgreSQL
database of its own (MLOPS_TUNING_STORAGE, tests/support/stacks.py), two mapped tune_worker tasks running trials
against it at once, and tune_collect logging the best on the parent MLflow run. The run is the session's
`tuned_run` (tests/topology/conftest.py), which other topology tests read too."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from include.ml.artifacts import safe_run_id
from tests.support.celery import query
from tests.support.registry import Registry
from tests.support.stacks import CeleryStack
from tests.topology.conftest import TUNED_TRIALS as TRIALS
from tests.topology.conftest import TUNED_WORKERS as WORKERS

pytestmark = pytest.mark.integration

DAG_ID = "ml_pipeline"


def test_two_workers_share_one_study_in_postgres(celery_stack: CeleryStack, tuned_run: str) -> None:
    stack, client, run_id = celery_stack, celery_stack.client, tuned_run
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
