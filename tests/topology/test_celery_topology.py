"""ml_pipeline on the production topology, run natively: CeleryExecutor, PostgreSQL, Redis, two workers.

The stack (tests/support/stacks.py) is scripts/airflow_stack.sh with environment settings only.
Runs are triggered through the REST API. Which worker ran a task is read from the task instance's
hostname: each worker records its own Celery node name there (scripts/stack_hostname.py), since
both share this machine's hostname.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from include.ml.artifacts import safe_run_id
from tests.support.celery import kill_worker, query
from tests.support.registry import Registry
from tests.support.stacks import CeleryStack

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

DAG_ID = "ml_pipeline"
STAGES = ("ingest", "validate", "transform", "tune", "train", "evaluate")  # then deploy and verify, skipped here
TUNE_STEPS = ("tune_worker", "tune_collect")  # tune's workers and collect (tests/topology/test_celery_tuning.py)
QUEUE = "default"  # [operators] default_queue: every task of the DAG goes there
RUN_TIMEOUT = 300


# --- helpers ---------------------------------------------------------------------------------------


@contextmanager
def diagnosed(stack: CeleryStack, run_id: str) -> Iterator[None]:
    """Append the run's task states and hosts, and the stack's log tails, to an assertion that fails inside."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{report(stack, run_id)}") from None


def report(stack: CeleryStack, run_id: str) -> str:
    lines = [f"=== {DAG_ID} run {run_id}"]
    try:
        for ti in stack.client.task_instances(DAG_ID, run_id):
            lines.append(f"  {ti['task_id']}: {ti['state']} try {ti['try_number']} on {ti['hostname']} pid {ti['pid']}")
        lines.append(stack.client.describe(DAG_ID, run_id))
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real failure
        lines.append(f"<could not query the API: {exc}>")
    return "\n".join([*lines, stack.log_tails(15)])


def wait_for_task(stack: CeleryStack, run_id: str, task_id: str, state: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = next((t for t in stack.client.task_instances(DAG_ID, run_id) if t["task_id"] == task_id), None)
        if ti and ti["state"] == state:
            return ti
        if ti and ti["state"] in ("failed", "upstream_failed"):
            break
        time.sleep(0.2)
    pytest.fail(f"{task_id} did not reach {state} within {timeout:.0f}s\n{report(stack, run_id)}", pytrace=False)


def assert_rest_skipped(stack: CeleryStack, run_id: str) -> None:
    """The DAG's tasks after evaluate (deploy, verify) were skipped: the stack runs with MLOPS_DEPLOY_TARGET=none."""
    rest = {ti["task_id"]: ti["state"] for ti in stack.client.task_instances(DAG_ID, run_id)
            if ti["task_id"] not in (*STAGES, *TUNE_STEPS)}
    assert set(rest.values()) <= {"skipped"}, rest


def run_statuses(registry: Registry, run_id: str) -> dict[str, str]:
    """MLflow run id -> status, for the runs an Airflow run's tasks started."""
    return {r.info.run_id: r.info.status for r in registry.pipeline_runs(run_id)}


def s3_objects(stack: CeleryStack) -> dict[str, str]:
    """Every object in the stack's artifact bucket: key -> ETag."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        found.update({item["Key"]: item["ETag"] for item in page.get("Contents", [])})
    return found


def model_files(stack: CeleryStack, location: str) -> set[str]:
    """File names under a model's s3:// location in the stack's bucket."""
    prefix = f"s3://{stack.bucket}/"
    assert location.startswith(prefix), f"model stored at {location}, not in the S3 artifact store {prefix}"
    key_prefix = location[len(prefix):].rstrip("/") + "/"
    return {key[len(key_prefix):] for key in s3_objects(stack) if key.startswith(key_prefix)}


# --- tests -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(celery_stack: CeleryStack) -> CeleryStack:
    started = time.monotonic()
    celery_stack.client.wait_for_dag(DAG_ID, timeout=120)
    celery_stack.client.unpause(DAG_ID)
    celery_stack.timings["DAG parsed and listed by the API (s)"] = time.monotonic() - started
    return celery_stack


def test_a_run_spreads_over_both_workers_and_keeps_everything_in_postgres(stack: CeleryStack, tuned_run: str) -> None:
    """The session's tuned run (tests/topology/conftest.py): its two tune_worker tasks ran on the two workers at
    once; metadata, Celery's results and the registry are all in PostgreSQL, the model's files in S3."""
    client, run_id = stack.client, tuned_run
    with diagnosed(stack, run_id):
        tis = client.task_instances(DAG_ID, run_id)
        stages = {ti["task_id"]: ti for ti in tis if ti["task_id"] in STAGES}
        assert {t: (ti["state"], ti["try_number"], ti["queue"]) for t, ti in stages.items()} == \
            {stage: ("success", 1, QUEUE) for stage in STAGES}
        assert_rest_skipped(stack, run_id)
        hosts = {(ti["task_id"], ti["map_index"]): ti["hostname"] for ti in tis if ti["state"] == "success"}
        assert {host for (task, _), host in hosts.items() if task == "tune_worker"} == set(stack.workers.values())

        # The metadata DB is the session's PostgreSQL database (no SQLite file), and holds the same.
        rows = query(stack.databases["airflow"], "SELECT task_id, map_index, hostname, state FROM task_instance "
                     "WHERE dag_id = %s AND run_id = %s AND state = 'success'", DAG_ID, run_id)
        assert {(task, index): host for task, index, host, _ in rows} == hosts
        assert not list(stack.home.glob("*.db"))
        # Celery's results went to PostgreSQL too, and its messages through Redis under the session's prefix.
        statuses = dict(query(stack.databases["airflow"], "SELECT status, count(*) FROM celery_taskmeta GROUP BY 1"))
        assert statuses.get("SUCCESS", 0) >= len(hosts), statuses
        import redis

        assert redis.Redis.from_url(stack.broker.url).exists(f"{stack.broker.prefix}_kombu.binding.{QUEUE}")

        # The new model version is in the PostgreSQL-backed registry, and its files are in S3.
        evaluated = client.xcom(DAG_ID, run_id, "evaluate")
        name, version = evaluated["model_name"], evaluated["version"]
        registered = query(stack.databases["mlflow"], "SELECT name, version, run_id FROM model_versions")
        assert (name, int(version), evaluated["mlflow_run_id"]) in registered
        registry = Registry(stack.mlflow_url)
        assert registry.versions()[(name, version)] == evaluated["mlflow_run_id"]
        assert "MLmodel" in model_files(stack, registry.model_location(name, version))
        assert (stack.artifacts_root / safe_run_id(run_id) / "evaluate" / "result.json").is_file()


def test_killed_worker_task_is_retried_on_the_other_worker(stack: CeleryStack) -> None:
    """SIGKILL the worker running train (all its processes); the other worker retries it, nothing is lost."""
    client = stack.client
    registry = Registry(stack.mlflow_url)
    versions_before = registry.versions()
    objects_before = s3_objects(stack)
    started = time.monotonic()
    # Even a quick family keeps train's MLflow run open for seconds (logging the model): time to kill it.
    # No search (what is killed is train): tune and its steps are skipped.
    run_id = client.trigger(DAG_ID, conf={"model_family": "elasticnet", "tune": False},
                            note="tests/topology: kill a worker")["dag_run_id"]

    # Wait until train runs on some worker and has opened its MLflow run, then kill that worker.
    deadline = time.monotonic() + 180
    while True:
        train = wait_for_task(stack, run_id, "train", "running")
        open_runs = [r for r, status in run_statuses(registry, run_id).items() if status == "RUNNING"]
        if train["hostname"] in stack.workers.values() and train["pid"] and open_runs:
            break
        assert time.monotonic() < deadline, f"train never opened its MLflow run\n{report(stack, run_id)}"
        time.sleep(0.1)
    victim = train["hostname"]
    survivor = next(node for node in stack.workers.values() if node != victim)
    component = next(c for c, node in stack.workers.items() if node == victim)
    killed = kill_worker(stack.worker_pid(component))
    killed_at = time.monotonic()
    stack.timings["trigger to worker killed mid-train (s)"] = killed_at - started

    client.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
    stack.timings["worker killed to run success (s)"] = time.monotonic() - killed_at

    with diagnosed(stack, run_id):
        assert train["pid"] in killed, "the task process itself was not among the killed worker's processes"
        states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in client.task_instances(DAG_ID, run_id)
                  if ti["task_id"] in STAGES}
        assert states == {**{stage: ("success", 1) for stage in STAGES}, "tune": ("skipped", 1),
                          "train": ("success", 2)}
        assert_rest_skipped(stack, run_id)
        tries = client.task_tries(DAG_ID, run_id, "train")
        assert [(t["try_number"], t["hostname"]) for t in tries] == [(1, victim), (2, survivor)]
        assert tries[0]["state"] in ("failed", "up_for_retry") and tries[1]["state"] == "success"
        hosts = {ti["task_id"]: ti["hostname"] for ti in client.task_instances(DAG_ID, run_id)}
        assert hosts["evaluate"] == survivor

        # The registry lost nothing and gained exactly the retry's model version.
        trained = client.xcom(DAG_ID, run_id, "train")
        evaluated = client.xcom(DAG_ID, run_id, "evaluate")
        versions_after = registry.versions()
        assert {key: versions_after.get(key) for key in versions_before} == versions_before
        added = {key: run for key, run in versions_after.items() if key not in versions_before}
        assert added == {(evaluated["model_name"], evaluated["version"]): trained["mlflow_run_id"]}
        # The killed try's MLflow run was closed by the retry, not left RUNNING.
        assert run_statuses(registry, run_id) == {open_runs[0]: "FAILED", trained["mlflow_run_id"]: "FINISHED"}

        # Every artifact stored before is still there, unchanged; the new model's files are complete.
        objects_after = s3_objects(stack)
        assert {key: objects_after.get(key) for key in objects_before} == objects_before
        location = registry.model_location(evaluated["model_name"], evaluated["version"])
        assert "MLmodel" in model_files(stack, location)
        run_dir = stack.artifacts_root / safe_run_id(run_id)
        for stage in (stage for stage in STAGES if stage != "tune"):
            assert json.loads((run_dir / stage / "result.json").read_text()), stage
        assert sorted(p.name for p in (run_dir / "train").iterdir()) == ["result.json"], "leftovers of the killed try"
