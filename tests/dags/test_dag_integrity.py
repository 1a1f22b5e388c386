"""Every DAG in dags/ loads, is tagged, retries, and parses without importing the ML stack.

Airflow runs in fresh interpreters here (as the dag-processor does), with a temp AIRFLOW_HOME:
importing it into the test process would reconfigure logging for every other test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.project import REPO

pytestmark = pytest.mark.integration  # each check runs Airflow in a fresh interpreter

DAGS = REPO / "dags"
HEAVY = ("pandas", "sklearn", "mlflow", "great_expectations", "include.ml.components")
MAX_PARSE_SECONDS = 5.0  # Airflow's own limit ([core] dagbag_import_timeout) is 30

LOAD_DAGBAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from include.ml.exceptions import (BatchPredictionError, ConfigError, DataValidationError, DeploymentError,
                                   IncompatibleChampionError, SourceTooLargeError, TuningError)

bag = DagBag(sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for task in dag.tasks:
        policy = task.retry_policy
        tasks[task.task_id] = {
            "retries": task.retries,
            "backoff": task.retry_exponential_backoff,
            "trigger_rule": task.trigger_rule.value,
            "mapped": "Mapped" in type(task).__name__,
            "max_active_tis_per_dagrun": task.max_active_tis_per_dagrun,
            "on_error": {name: policy.evaluate(error, 1, task.retries + 1).action.value if policy else None
                         for name, error in [("DataValidationError", DataValidationError([], None)),
                                             ("ConfigError", ConfigError("f", "k", "bad")),
                                             ("DeploymentError", DeploymentError("refused")),
                                             ("IncompatibleChampionError", IncompatibleChampionError("1", ["task"])),
                                             ("SourceTooLargeError", SourceTooLargeError("s", "max_bytes", 1, "2")),
                                             ("BatchPredictionError", BatchPredictionError("unwritable")),
                                             ("TuningError", TuningError("no trial completed")),
                                             ("RuntimeError", RuntimeError("flaky"))]},
        }
    dags[dag_id] = {"file": dag.fileloc, "tags": sorted(dag.tags), "catchup": dag.catchup,
                    "max_active_runs": dag.max_active_runs, "params": sorted(dag.params), "tasks": tasks}
print(json.dumps({"import_errors": bag.import_errors, "dags": dags}))
"""

IMPORT_ONE = """
import importlib.util, json, sys, time
started = time.perf_counter()
import airflow.sdk  # the dag-processor has Airflow loaded before it parses a file
airflow_loaded = time.perf_counter()
# Record connection and variable lookups: they hit the metadata DB on every parse.
from airflow.sdk import Connection, Variable
from airflow.sdk.bases.hook import BaseHook
lookups = []
def spy(kind):
    def lookup(*args, **kwargs):
        lookups.append(f"{kind}{args[1:] or args}")
        raise LookupError(f"{kind} at parse time")
    return classmethod(lookup)
Connection.get, Variable.get = spy("Connection.get"), spy("Variable.get")
BaseHook.get_connection = spy("BaseHook.get_connection")
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
try:
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
except LookupError:
    pass
done = time.perf_counter()
heavy = sorted(name for name in sys.modules if any(name == h or name.startswith(h + ".") for h in sys.argv[2:]))
print(json.dumps({"heavy": heavy, "lookups": lookups, "airflow_seconds": airflow_loaded - started,
                  "parse_seconds": done - airflow_loaded}))
"""


def _python(code: str, *args: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
               PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _python(LOAD_DAGBAG, str(DAGS), home=tmp_path_factory.mktemp("airflow_home"))


def test_dags_load_without_import_errors(dagbag: dict) -> None:
    assert dagbag["import_errors"] == {}
    assert "ml_pipeline" in dagbag["dags"]


def test_every_dag_is_tagged_and_retries(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 1, f"{dag_id}.{task_id} does not retry"


def test_ml_pipeline_shape(dagbag: dict) -> None:
    dag = dagbag["dags"]["ml_pipeline"]
    assert list(dag["tasks"]) == ["ingest", "validate", "transform", "tune", "tune_worker", "tune_collect", "train",
                                  "evaluate", "deploy", "verify", "signal_candidate"]
    assert (dag["catchup"], dag["max_active_runs"]) == (False, 1)
    assert dag["params"] == ["force_promote", "model_family", "source", "tune", "tune_trials", "tune_workers"]
    assert dag["tasks"]["train"]["trigger_rule"] == "none_failed"  # runs after a skipped tune (tuning off)
    # tune opens the study; one mapped tune_worker per worker of the run, all at once; tune_collect picks the best
    assert [name for name, task in dag["tasks"].items() if task["mapped"]] == ["tune_worker"]
    # the larger of params.yaml's tuning.workers (1) and the trigger form's maximum for tune_workers
    assert dag["tasks"]["tune_worker"]["max_active_tis_per_dagrun"] == 8
    for task in dag["tasks"].values():
        assert task["backoff"] > 1  # exponential backoff between retries
        # bad data or config fails at once; anything else gets the normal retries
        assert task["on_error"] == {"DataValidationError": "fail", "ConfigError": "fail", "DeploymentError": "fail",
                                    "IncompatibleChampionError": "fail", "SourceTooLargeError": "fail",
                                    "BatchPredictionError": "default", "TuningError": "fail", "RuntimeError": "default"}


def test_ml_release_shape(dagbag: dict) -> None:
    """The shipped release: section's steps in order, promote, and abort when anything failed."""
    dag = dagbag["dags"]["ml_release"]
    assert list(dag["tasks"]) == ["begin", "shadow", "bake_shadow", "canary_10", "bake_canary_10", "canary_50",
                                  "bake_canary_50", "promote", "confirm", "abort"]
    assert (dag["catchup"], dag["max_active_runs"], dag["params"]) == (False, 1, ["version"])
    assert dag["tasks"]["abort"]["trigger_rule"] == "one_failed"
    # a failed rollout or bad configuration fails at once (abort runs); a flaky read of /metrics is retried
    assert dag["tasks"]["bake_shadow"]["on_error"] == {
        "DataValidationError": "default", "ConfigError": "fail", "DeploymentError": "fail",
        "IncompatibleChampionError": "default", "SourceTooLargeError": "default", "BatchPredictionError": "default",
        "TuningError": "default", "RuntimeError": "default"}


def test_ml_batch_predict_shape(dagbag: dict) -> None:
    dag = dagbag["dags"]["ml_batch_predict"]
    assert list(dag["tasks"]) == ["plan", "score", "combine"]  # score: mapped over the plan's partitions
    assert (dag["catchup"], dag["max_active_runs"]) == (False, 1)
    assert dag["params"] == ["explain", "input", "on_bad_rows", "output", "partitions", "version"]
    # a bad file, output, version or configuration fails at once; anything else (a flaky source, a killed worker)
    # is retried
    for task in ("plan", "score", "combine"):
        assert dag["tasks"][task]["on_error"] == {
            "DataValidationError": "fail", "ConfigError": "fail", "DeploymentError": "fail",
            "IncompatibleChampionError": "default", "SourceTooLargeError": "fail", "BatchPredictionError": "fail",
            "TuningError": "default", "RuntimeError": "default"}, task


@pytest.mark.parametrize("dag_file", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_parsing_imports_no_ml_library(dag_file: Path, tmp_path: Path, record_property, parse_times) -> None:
    found = _python(IMPORT_ONE, str(dag_file), *HEAVY, home=tmp_path)
    record_property("parse_seconds", round(found["parse_seconds"], 3))
    parse_times[dag_file.name] = (found["parse_seconds"], found["airflow_seconds"])
    assert found["heavy"] == [], f"parsing {dag_file.name} imported {found['heavy']}"
    assert found["lookups"] == [], f"parsing {dag_file.name} looked up {found['lookups']}"
    assert found["parse_seconds"] < MAX_PARSE_SECONDS


def test_the_parse_check_catches_lookups_and_heavy_imports(tmp_path: Path) -> None:
    """The check above can fail: a DAG file doing both things at top level is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text("import pandas\nfrom airflow.sdk import Variable\nVariable.get('threshold')\n")
    found = _python(IMPORT_ONE, str(bad), *HEAVY, home=tmp_path)
    assert "pandas" in found["heavy"]
    assert found["lookups"] == ["Variable.get('threshold',)"]
