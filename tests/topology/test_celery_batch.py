"""ml_batch_predict on the production topology (CeleryExecutor, PostgreSQL, Redis, two workers): a generated
2M-row file scored in 4 partitions spread over both workers, one of which is SIGKILLed mid-partition. The killed
partition is retried on the other worker, and the output is single-process scoring's (predict_file in this process,
with the bundle the run exported), row for row: no row lost, none repeated."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest

from include.ml.artifacts import safe_run_id
from tests.support.celery import kill_worker
from tests.support.project import WINE_CSV
from tests.support.registry import Registry
from tests.support.stacks import STACK_SCRIPT, CeleryStack

pytestmark = pytest.mark.integration

DAG_ID = "ml_batch_predict"
MODEL = "wine-quality"  # the stack config's registered model
ROWS, PARTITIONS = 2_000_000, 4


@pytest.fixture(scope="module")
def champion(celery_stack: CeleryStack, tuned_run: str) -> str:
    """The stack's champion: the session's ml_pipeline run promoted it (tests/topology/conftest.py)."""
    return Registry(celery_stack.mlflow_url).champion(MODEL)


@pytest.fixture(scope="module")
def two_million_rows(celery_stack: CeleryStack) -> Path:
    """2M wine rows (the real file's lines drawn with replacement, so every row passes schema.yaml), no id column:
    the output's key is the row number, which each partition must shift right."""
    lines = WINE_CSV.read_bytes().splitlines(keepends=True)
    picks = np.random.default_rng(25).integers(1, len(lines), ROWS)
    source = celery_stack.sources / "two-million.csv"
    with source.open("wb") as file:
        file.write(lines[0])
        for start in range(0, ROWS, 200_000):
            file.write(b"".join(lines[i] for i in picks[start:start + 200_000]))
    return source


@pytest.fixture
def restarts(celery_stack: CeleryStack) -> Iterator[list[subprocess.Popen]]:
    """`scripts/airflow_stack.sh up` started in the background (it starts only what is not running: the killed
    worker), waited for at the end: both workers are up again for the session's other tests."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        assert process.wait(timeout=300) == 0, "airflow_stack.sh up did not restart the killed worker"


def restart(stack: CeleryStack, restarts: list[subprocess.Popen]) -> None:
    restarts.append(subprocess.Popen(["bash", str(STACK_SCRIPT), "up"], env=stack.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL))


def score_tis(stack: CeleryStack, run_id: str) -> list[dict[str, Any]]:
    return [ti for ti in stack.client.task_instances(DAG_ID, run_id) if ti["task_id"] == "score"]


def mapped_tries(stack: CeleryStack, run_id: str, map_index: int) -> list[dict[str, Any]]:
    tries = stack.client.get(f"dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/score/{map_index}/tries")
    return sorted(tries["task_instances"], key=lambda t: t["try_number"])


def kill_mid_partition(stack: CeleryStack, run_id: str, parts: Path, timeout: float = 240) -> dict[str, Any]:
    """Wait until a score task is running with rows already written to its temporary part, then SIGKILL its
    worker (every process of it, the task's included); the task instance as it was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = {int(p.name.split(".")[1].removeprefix("part-")) for p in parts.glob(".part-*.parquet.*.tmp")
                   if p.stat().st_size > 0} if parts.is_dir() else set()
        running = [ti for ti in score_tis(stack, run_id) if ti["state"] == "running" and ti["map_index"] in written
                   and ti["hostname"] in stack.workers.values() and ti["pid"]]
        if running:
            victim = running[0]
            component = next(c for c, node in stack.workers.items() if node == victim["hostname"])
            killed = kill_worker(stack.worker_pid(component))
            assert victim["pid"] in killed, "the task process was not among the killed worker's processes"
            return victim
        time.sleep(0.2)
    pytest.fail(f"no score task got mid-partition within {timeout:.0f}s: {score_tis(stack, run_id)}", pytrace=False)


def single_process_output(stack: CeleryStack, source: Path, output: Path, version: str) -> Any:
    """predict_file in this process: the stack's configuration, its registry and the bundle the run exported."""
    import mlflow

    from include.ml.configuration import ConfigurationManager
    from include.release.batch import predict_file

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        cm = ConfigurationManager(env={**stack.env, "MLOPS_TRACKING_URI": stack.mlflow_url})
        return predict_file(cm.batch_prediction(), str(source), str(output), version)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def test_partitions_on_both_workers_survive_a_killed_worker_row_for_row(
        celery_stack: CeleryStack, champion: str, two_million_rows: Path, restarts: list[subprocess.Popen]) -> None:
    stack, client = celery_stack, celery_stack.client
    client.wait_for_dag(DAG_ID, timeout=120)
    client.unpause(DAG_ID)
    output = stack.batch_outputs / "two-million.csv"
    started = time.monotonic()
    run_id = client.trigger(DAG_ID, conf={"input": str(two_million_rows), "output": str(output),
                                          "partitions": PARTITIONS},
                            note="tests/topology: 4 partitions, a worker killed")["dag_run_id"]
    parts = stack.artifacts_root / safe_run_id(run_id) / "predict" / "parts"
    victim = kill_mid_partition(stack, run_id, parts)
    restart(stack, restarts)  # the retry may go to either worker: the restarted one has the same node name
    stack.timings["batch: trigger to worker killed mid-partition (s)"] = time.monotonic() - started
    client.wait_for_run(DAG_ID, run_id, timeout=420)
    stack.timings["batch: 2M rows in 4 partitions, trigger to success (s)"] = time.monotonic() - started

    tries = mapped_tries(stack, run_id, victim["map_index"])
    assert [t["try_number"] for t in tries] == [1, 2] and tries[0]["hostname"] == victim["hostname"]
    assert tries[1]["hostname"] in stack.workers.values()
    assert tries[0]["state"] in ("failed", "up_for_retry") and tries[1]["state"] == "success"
    scored = score_tis(stack, run_id)
    assert sorted(ti["map_index"] for ti in scored) == list(range(PARTITIONS))
    assert {ti["state"] for ti in scored} == {"success"}
    summary = client.xcom(DAG_ID, run_id, "combine")
    assert (summary["rows"], summary["partitions"], summary["model_version"]) == (ROWS, PARTITIONS, champion)
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert [p["rows_in"] for p in manifest["partitions"]] == [p["rows_out"] for p in manifest["partitions"]]
    assert manifest["rows_out"] == ROWS and not parts.exists()

    out = pd.read_csv(output, sep=";")
    assert len(out) == ROWS and out["id"].tolist() == list(range(ROWS))  # no row lost, none repeated
    began = time.monotonic()
    single_process_output(stack, two_million_rows, stack.outputs / "single.csv", champion)
    stack.timings["batch: 2M rows single-process, in the test (s)"] = time.monotonic() - began
    assert output.read_bytes() == (stack.outputs / "single.csv").read_bytes()
