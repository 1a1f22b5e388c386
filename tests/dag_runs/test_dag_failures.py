"""ml_pipeline under a real Airflow 3 stack when things go wrong: bad data, a re-trigger, a killed task.

Every check goes through the stack's REST API (task states, logs, XCom), the stack's MLflow server
(runs, registered versions, the champion alias) and the temp artifacts root the stack writes to.
The tests share the session stack, so none assumes version numbers or a fresh store: each compares
the registry before and after its own runs, and any of them can run alone or in any order.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import psutil
import pytest

from include.ml.artifacts import safe_run_id
from include.ml.components.training import TrainingResult
from tests.support.project import WINE_CSV
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

DAG_ID = "ml_pipeline"
STAGES = ("ingest", "validate", "transform", "tune", "train", "evaluate", "deploy", "verify")
TRAINING = STAGES[:6]
TUNED = {"tune_worker": ("success", 1), "tune_collect": ("success", 1)}  # tune's mapped worker (one) and collect
NO_CANDIDATE = {"signal_candidate": ("skipped", 1)}  # release.strategy direct: no release candidate to announce
NOT_DEPLOYED = {"deploy": ("skipped", 1), "verify": ("skipped", 0), **NO_CANDIDATE}  # the gate kept the champion
RUN_TIMEOUT = 300  # a default run takes ~25 s; a retried train adds the DAG's retry delay (59 s, see below)


# --- helpers ------------------------------------------------------------------------------


def report(stack: Any, run_id: str, log_lines: int = 30) -> str:
    """What a failing assertion needs: every task's state and try, and the tail of each try's log
    (a few lines for a try that succeeded, `log_lines` for any other), then the scheduler's last lines."""
    client = stack.client
    lines = [f"=== {DAG_ID} run {run_id}"]
    try:
        lines.append(f"run state: {client.dag_run(DAG_ID, run_id)['state']}")
        order = (*STAGES, *TUNED, *NO_CANDIDATE)
        tis = sorted(client.task_instances(DAG_ID, run_id), key=lambda t: order.index(t["task_id"]))
        for ti in tis:
            lines.append(f"--- {ti['task_id']}: {ti['state']} (try {ti['try_number']}, pid {ti.get('pid')})")
            for attempt in range(1, (ti["try_number"] or 0) + 1):
                try:
                    log = client.task_log(DAG_ID, run_id, ti["task_id"], attempt).splitlines()
                except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real failure
                    log = [f"<log unavailable: {exc}>"]
                last = attempt == ti["try_number"] and ti["state"] == "success"
                tail = log[-(4 if last else log_lines):]
                lines.append(f"    try {attempt} log, last {len(tail)} lines:")
                lines += [f"    | {line[:300]}" for line in tail]
    except Exception as exc:  # noqa: BLE001
        lines.append(f"<could not query the API: {exc}>")
    scheduler_log = stack.home / "stack" / "scheduler.log"
    if scheduler_log.is_file():
        lines.append(f"=== {scheduler_log} (last 10 lines)")
        lines += [line[:300] for line in scheduler_log.read_text(errors="replace").splitlines()[-10:]]
    return "\n".join(lines)


@contextmanager
def diagnosed(stack: Any, run_id: str) -> Iterator[None]:
    """Append the run's task states and log tails to any assertion that fails inside the block."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{report(stack, run_id)}") from None


def run_and_wait(stack: Any, conf: dict[str, Any], note: str, expect: str = "success") -> str:
    run_id = stack.client.trigger(DAG_ID, conf=conf, note=note)["dag_run_id"]
    stack.client.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT, expect=expect)  # raises with failed logs
    return run_id


def task_states(stack: Any, run_id: str) -> dict[str, tuple[str | None, int]]:
    return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in stack.client.task_instances(DAG_ID, run_id)}


def same_metrics(metrics: dict[str, float]) -> Any:
    """Equal up to float rounding: a random forest with n_jobs=-1 sums its trees' predictions in
    whatever order its threads finish, so identical models can differ in the last bit (~1e-16)."""
    return pytest.approx(metrics, rel=1e-9, abs=1e-12)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden ones included), by relative path."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    evaluated: dict[str, Any]
    champion: str
    artifacts: Path
    hashes: dict[str, str]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(airflow_stack: Any) -> Any:
    airflow_stack.client.wait_for_dag(DAG_ID, timeout=120)
    airflow_stack.client.unpause(DAG_ID)
    return airflow_stack


@pytest.fixture(scope="module")
def store(stack: Any) -> Registry:
    """The stack's MLflow tracking store and registry, read through its MLflow server."""
    return Registry(stack.mlflow_url)


@pytest.fixture(scope="module")
def default_run(stack: Any, store: Registry) -> FinishedRun:
    """One uninterrupted run on the default data and params: the reference the other runs must match."""
    started = time.monotonic()
    run_id = run_and_wait(stack, {}, "test_dag_failures.py: reference run on the default data")
    stack.timings["failures: reference run (s)"] = time.monotonic() - started
    with diagnosed(stack, run_id):
        # promoted and deployed
        assert task_states(stack, run_id) == {**{stage: ("success", 1) for stage in STAGES}, **TUNED, **NO_CANDIDATE}
    evaluated = stack.client.xcom(DAG_ID, run_id, "evaluate")
    artifacts = stack.artifacts_root / safe_run_id(run_id)
    return FinishedRun(run_id, evaluated, store.champion(evaluated["model_name"]), artifacts, tree_hashes(artifacts))


# --- 1. invalid data --------------------------------------------------------------------------


def test_a_source_outside_the_allow_list_fails_ingest_at_once(stack: Any, store: Registry) -> None:
    versions_before = store.versions()
    run_id = run_and_wait(stack, {"source": "/etc/passwd"}, "test_dag_failures.py: refused source", expect="failed")
    with diagnosed(stack, run_id):
        assert task_states(stack, run_id)["ingest"] == ("failed", 1)  # ConfigError: failed at once, no retry
        log = stack.client.task_log(DAG_ID, run_id, "ingest")
        assert "'/etc/passwd'" in log and "data_source.allowed_sources" in log
        assert store.versions() == versions_before


def test_invalid_data_fails_validation_at_once_and_registers_nothing(stack: Any, store: Registry) -> None:
    frame = pd.read_csv(WINE_CSV, sep=";")
    frame = frame.drop(columns=["citric acid"])
    bad_ph = [9.87, 1.23, 12.34]  # the schema allows 2.5 <= pH <= 4.5
    frame.loc[[3, 10, 20], "pH"] = bad_ph
    source = stack.sources / "winequality-red-broken.csv"
    frame.to_csv(source, sep=";", index=False)

    versions_before = store.versions()
    started = time.monotonic()
    run_id = run_and_wait(stack, {"source": str(source)}, "test_dag_failures.py: invalid data", expect="failed")
    stack.timings["failures: invalid-data run, trigger to failed (s)"] = time.monotonic() - started

    with diagnosed(stack, run_id):
        states = task_states(stack, run_id)
        assert states["ingest"] == ("success", 1)
        # DataValidationError is failed at once by the DAG's retry policy: one try, never up_for_retry.
        assert states["validate"] == ("failed", 1)
        for stage in ("transform", "tune", "train", "evaluate"):
            assert states[stage] == ("upstream_failed", 0), f"{stage} should never have run"

        # Nothing reached MLflow: no run for this pipeline run, no new model version.
        assert store.pipeline_runs(run_id) == []
        assert store.versions() == versions_before
        assert not (stack.artifacts_root / safe_run_id(run_id) / "train").exists()

        # The validate log, read through the REST API, names every failed expectation and the bad values.
        log = stack.client.task_log(DAG_ID, run_id, "validate", 1)
        assert "DataValidationError" in log
        decision = next((line for line in log.splitlines() if "Retry policy decision" in line), "")
        assert "action=fail" in decision and "retrying cannot fix it" in decision, "no retry-policy verdict in the log"
        assert "data validation failed" in log
        assert "expect_table_columns_to_match_set" in log and "missing ['citric acid']" in log
        assert "citric acid: expect_column_to_exist" in log
        assert "pH: expect_column_values_to_be_between" in log
        assert "min_value=2.5" in log and "max_value=4.5" in log
        assert "3 bad value(s)" in log
        for value in bad_ph:
            assert str(value) in log, f"offending pH value {value} not in the validate log"
        # The stage's own result file records the same failures.
        result = json.loads((stack.artifacts_root / safe_run_id(run_id) / "validate" / "result.json").read_text())
        assert result["success"] is False
        ph = next(f for f in result["failures"] if f["column"] == "pH")
        assert sorted(ph["examples"]) == sorted(bad_ph)


# --- 2. idempotent re-trigger ----------------------------------------------------------------------


def test_retrigger_on_same_data_changes_nothing_that_exists(stack: Any, store: Registry,
                                                             default_run: FinishedRun) -> None:
    first = default_run
    name = first.evaluated["model_name"]
    versions_before = store.versions()
    assert store.champion(name) == first.champion, "the champion moved after the reference run"

    started = time.monotonic()
    run_id = run_and_wait(stack, {}, "test_dag_failures.py: re-trigger on the same data")
    stack.timings["failures: re-triggered run (s)"] = time.monotonic() - started

    with diagnosed(stack, run_id):
        assert task_states(stack, run_id) == {**{stage: ("success", 1) for stage in TRAINING}, **TUNED, **NOT_DEPLOYED}
        second = stack.client.xcom(DAG_ID, run_id, "evaluate")
        # Same data and seeds: the same model, so the gate keeps the champion.
        assert second["metrics"] == same_metrics(first.evaluated["metrics"])
        assert second["promoted"] is False
        assert second["gate_reason"].startswith(("not better", f"v{second['version']} is already the champion")), \
            second["gate_reason"]
        assert store.champion(name) == first.champion == second["champion_version"]
        # It registered its own version (one more), and touched none of the others.
        versions_after = store.versions()
        added = {key: run for key, run in versions_after.items() if key not in versions_before}
        assert list(added) == [(name, second["version"])]
        assert added[(name, second["version"])] == second["mlflow_run_id"] != first.evaluated["mlflow_run_id"]
        assert {key: versions_after[key] for key in versions_before} == versions_before
        # The first run's artifacts are byte for byte what they were when it finished.
        assert safe_run_id(run_id) != safe_run_id(first.run_id)
        assert tree_hashes(first.artifacts) == first.hashes


# --- 3. a killed task is retried --------------------------------------------------------------------


def _task_process(stack: Any, ti: dict[str, Any]) -> psutil.Process | None:
    """The process running this task instance, checked to be exactly that (never the scheduler or a supervisor).

    LocalExecutor's worker supervises each task in a forked child; the child reports its pid to the API
    (the TI's `pid`) and, once started, retitles itself `airflow worker -- <task instance id>`.
    None while the child has not retitled itself yet.
    """
    try:
        process = psutil.Process(ti["pid"])
        title = " ".join(process.cmdline()).strip()  # setproctitle pads the title with spaces
    except psutil.NoSuchProcess:
        return None
    if title != f"airflow worker -- {ti['id']}":
        return None
    # Ours, not another stack's: a LocalExecutor supervisor (a worker forked by this stack's scheduler) is
    # its parent. (Not checked through AIRFLOW_STACK_ID: setproctitle reuses the environ block, so
    # /proc/<pid>/environ of a retitled process no longer holds it.)
    scheduler_pid = int((stack.home / "stack" / "scheduler.pid").read_text().split()[0])
    parent = process.parent()
    assert parent is not None and " ".join(parent.cmdline()).startswith("airflow worker -- LocalExecutor"), \
        f"pid {process.pid}'s parent is not a LocalExecutor supervisor: {parent and parent.cmdline()}"
    assert scheduler_pid in [p.pid for p in process.parents()], \
        f"pid {process.pid} does not descend from this stack's scheduler (pid {scheduler_pid})"
    assert scheduler_pid not in (process.pid, parent.pid)
    return process


def _kill_train_mid_mlflow_run(stack: Any, store: Registry, run_id: str, timeout: float = 180) -> tuple[int, str]:
    """Wait until train is running and has opened its MLflow run, then SIGKILL the task process.

    Returns the killed pid and the MLflow run id the killed attempt left RUNNING.
    """
    deadline = time.monotonic() + timeout
    process = None
    while time.monotonic() < deadline:
        train = next((ti for ti in stack.client.task_instances(DAG_ID, run_id) if ti["task_id"] == "train"), None)
        state = train and train["state"]
        if state in ("success", "failed", "up_for_retry", "upstream_failed"):
            pytest.fail(f"train ended ({state}) before it could be killed\n{report(stack, run_id)}", pytrace=False)
        if state == "running" and train["pid"]:
            process = process or _task_process(stack, train)
            open_runs = [r for r in store.pipeline_runs(run_id) if r.info.status == "RUNNING"] if process else []
            if open_runs:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
                return process.pid, open_runs[0].info.run_id
            time.sleep(0.1)
        else:
            time.sleep(0.25)
    found = f"task process {process.pid}" if process else "no task process"
    pytest.fail(f"train did not reach its MLflow run within {timeout:.0f}s ({found})\n{report(stack, run_id)}",
                pytrace=False)


def test_killed_train_task_is_retried_and_registers_once(stack: Any, store: Registry,
                                                         default_run: FinishedRun) -> None:
    """SIGKILL train's task process while its MLflow run is open; the retry must finish the job exactly once.

    The wait is mostly the DAG's retry delay: 30 s with exponential backoff, which Airflow spreads to
    30 + hash(dag, task, logical date, try) % 30 s; for a manual run (no logical date) that is 59 s.
    """
    name = default_run.evaluated["model_name"]
    versions_before = store.versions()
    started = time.monotonic()
    run_id = stack.client.trigger(DAG_ID, conf={}, note="test_dag_failures.py: kill train mid-run")["dag_run_id"]
    killed_pid, stale_run = _kill_train_mid_mlflow_run(stack, store, run_id)
    killed_at = time.monotonic()
    stack.timings["failures: trigger to train killed (s)"] = killed_at - started
    stack.client.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
    stack.timings["failures: train killed to run success (s)"] = time.monotonic() - killed_at

    with diagnosed(stack, run_id):
        states = task_states(stack, run_id)
        assert states == {**{stage: ("success", 1) for stage in TRAINING}, **TUNED, "train": ("success", 2),
                          **NOT_DEPLOYED}
        # Try 1's log holds the supervisor's account of the kill.
        first_try = stack.client.task_log(DAG_ID, run_id, "train", 1)
        assert "Process terminated by signal" in first_try and "SIGKILL" in first_try
        assert not psutil.pid_exists(killed_pid) or psutil.Process(killed_pid).status() == psutil.STATUS_ZOMBIE

        # Try 2 closed the MLflow run the killed try left open, and logged its own.
        trained = stack.client.xcom(DAG_ID, run_id, "train")
        runs = {r.info.run_id: r.info.status for r in store.pipeline_runs(run_id)}
        assert runs == {stale_run: "FAILED", trained["mlflow_run_id"]: "FINISHED"}
        assert f"marking MLflow run {stale_run}" in stack.client.task_log(DAG_ID, run_id, "train", 2)

        # Exactly one new model version, from the retry's MLflow run.
        added = {key: run for key, run in store.versions().items() if key not in versions_before}
        evaluated = stack.client.xcom(DAG_ID, run_id, "evaluate")
        assert added == {(name, evaluated["version"]): trained["mlflow_run_id"]}

        # train's result.json is complete (written once, atomically, by try 2) ...
        train_dir = stack.artifacts_root / safe_run_id(run_id) / "train"
        assert sorted(p.name for p in train_dir.iterdir()) == ["result.json"], "leftovers of the killed try"
        result = json.loads((train_dir / "result.json").read_text())
        assert set(result) == {f.name for f in fields(TrainingResult)}
        assert result["mlflow_run_id"] == trained["mlflow_run_id"]
        assert result["model_uri"] == trained["model_uri"]
        reference = json.loads((default_run.artifacts / "train" / "result.json").read_text())
        for key in ("family", "estimator", "train_rows", "experiment_id", "skops_trusted_types"):
            assert result[key] == reference[key], key
        # ... and the retried model is the model an uninterrupted run trains: same metrics.
        assert evaluated["metrics"] == same_metrics(default_run.evaluated["metrics"])
        assert evaluated["mlflow_run_id"] == trained["mlflow_run_id"]
        assert store.champion(name) == default_run.champion
