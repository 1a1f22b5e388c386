"""The ml_pipeline DAG under a real Airflow 3 stack: triggered and checked through the REST API.

The tests share the session stack with tests/dag_runs/test_dag_failures.py and run in any order, alone or
together: each reads the registry (the model's versions, its champion) and the prediction server's version
before its runs and asserts what its own runs changed. A forced promotion makes a run's model the champion
whatever ran before.
"""

from __future__ import annotations

import json
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import requests

from include.ml.artifacts import safe_run_id
from tests.support.network import get_json
from tests.support.project import REPO
from tests.support.registry import Registry
from tests.support.servers import Poller

pytestmark = pytest.mark.integration

DAG_ID = "ml_pipeline"
MODEL = "wine-quality"  # include/config's mlflow.registered_model_name: the model the stack's runs register
FORCED = {"model_family": "elasticnet", "force_promote": True}
STAGES = ("ingest", "validate", "transform", "tune", "train", "evaluate", "deploy", "verify")
TUNE_STEPS = ("tune_worker", "tune_collect")  # tune's mapped workers (one here: tuning.workers 1) and collect
# A real wine from the default dataset, as a client of the prediction server sends it.
WINE = {"fixed acidity": 7.4, "volatile acidity": 0.7, "citric acid": 0.0, "residual sugar": 1.9, "chlorides": 0.076,
        "free sulfur dioxide": 11.0, "total sulfur dioxide": 34.0, "density": 0.9978, "pH": 3.51, "sulphates": 0.56,
        "alcohol": 9.4}


def served_version(url: str) -> str | None:
    """The version the prediction server answers with; None while it has no model (503)."""
    try:
        return get_json(f"{url}/version")["version"]
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return None
        raise


def searched_versions(stack: Any, name: str) -> list[tuple[str, str]]:
    """(version, run id) of every version of `name`, through the stack's MLflow server's REST API."""
    response = requests.get(f"{stack.mlflow_url}/api/2.0/mlflow/model-versions/search",
                            params={"filter": f"name = '{name}'"}, timeout=30)
    response.raise_for_status()
    return sorted(((v["version"], v["run_id"]) for v in response.json().get("model_versions", [])),
                  key=lambda pair: int(pair[0]))


def test_triggered_run_succeeds_and_registers_a_model(airflow_stack) -> None:
    client = airflow_stack.client
    started = time.monotonic()
    client.wait_for_dag(DAG_ID, timeout=120)
    airflow_stack.timings["DAG parsed and listed by the API (s)"] = time.monotonic() - started
    client.unpause(DAG_ID)
    registry = Registry(airflow_stack.mlflow_url)
    versions_before = searched_versions(airflow_stack, MODEL)
    champion_before = registry.champion_or_none(MODEL)
    served_before = served_version(airflow_stack.serving_url)
    expected = str(max((int(version) for version, _ in versions_before), default=0) + 1)
    started = time.monotonic()
    # Trigger params reach the tasks: elasticnet instead of params.yaml's random forest (and quicker), tuned in
    # 2 trials, and a forced promotion, so that this run's model becomes the champion whatever ran on the stack before.
    run_id = client.trigger(DAG_ID, conf={**FORCED, "tune_trials": 2},
                            note="tests/dag_runs/test_dag_run.py")["dag_run_id"]
    client.wait_for_run(DAG_ID, run_id, timeout=240)
    airflow_stack.timings["ml_pipeline run, trigger to success (s)"] = time.monotonic() - started

    states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in client.task_instances(DAG_ID, run_id)}
    # release.strategy direct (the shipped params.yaml): no release candidate, so no candidate Asset event
    assert states == {**{stage: ("success", 1) for stage in (*STAGES, *TUNE_STEPS)}, "signal_candidate": ("skipped", 1)}

    # Outputs went to the stack's temp dirs, named after the Airflow run id.
    run_dir = airflow_stack.artifacts_root / safe_run_id(run_id)
    assert client.xcom(DAG_ID, run_id, "ingest")["data_path"].startswith(str(run_dir))
    assert (run_dir / "evaluate" / "result.json").is_file()
    assert not (REPO / "artifacts" / safe_run_id(run_id)).exists()
    tuned = client.xcom(DAG_ID, run_id, "tune_collect")
    assert (tuned["family"], tuned["trials"]) == ("elasticnet", 2)  # tuned within the run's family, on its budget
    assert client.xcom(DAG_ID, run_id, "train")["estimator"] == "ElasticNet"

    # The run registered the next version and the gate made it champion (forced).
    evaluated = client.xcom(DAG_ID, run_id, "evaluate")
    assert evaluated["model_name"] == MODEL
    assert (evaluated["version"], evaluated["promoted"], evaluated["champion_version"]) == (expected, True, expected)
    assert evaluated["gate_reason"] == "forced promotion"
    assert set(evaluated["metrics"]) == {"rmse", "mae", "r2"}
    assert registry.champion(MODEL) == expected
    aliases = registry.client.get_registered_model(MODEL).aliases
    assert str(aliases["champion"]) == expected
    if champion_before is not None:
        assert str(aliases["previous_champion"]) == champion_before

    # The stack's MLflow server reads the same store the tasks wrote to: exactly one version more.
    assert searched_versions(airflow_stack, MODEL) == [*versions_before, (expected, evaluated["mlflow_run_id"])]

    # The plugin's task links: the MLflow run page and the Data Docs the api-server serves.
    links = client.links(DAG_ID, run_id, "evaluate")
    assert links["MLflow run"] == client.xcom(DAG_ID, run_id, "train")["mlflow_run_url"]
    assert links["MLflow run"].startswith(f"{airflow_stack.mlflow_url}/#/experiments/")
    assert links["MLflow run"].endswith(f"/runs/{evaluated['mlflow_run_id']}")
    assert requests.get(f"{airflow_stack.mlflow_url}/api/2.0/mlflow/runs/get",
                        params={"run_id": evaluated["mlflow_run_id"]}, timeout=30).status_code == 200
    docs_url = client.links(DAG_ID, run_id, "validate")["Data Docs"]
    assert docs_url == f"{airflow_stack.api_url}/mlops/data-docs/{safe_run_id(run_id)}/index.html"
    # The Data Docs show the data: a login is needed (the UI's cookie or the API's token), as for the run's pages.
    assert requests.get(docs_url, timeout=30).status_code == 401
    page = client.fetch(docs_url)
    assert page.status_code == 200 and "Expectation" in page.text
    for escape in ("..%2F..%2Fingest%2Fdata.csv", "..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%00"):
        assert client.fetch(docs_url.replace("index.html", escape)).status_code == 404, escape
    assert client.fetch(f"{airflow_stack.api_url}/mlops/data-docs/..%2F..%2Fetc/passwd").status_code == 404

    # Lineage: the source, the run's snapshot and the registered model are Assets.
    assets = {a["name"] for a in client.get("assets")["assets"]}
    assert {"wine-quality-source", "wine-quality-snapshot", "wine-quality-registered-model"} <= assets

    # The deploy task put the new version on the stack's prediction server (switching it from what it served
    # before), and verify checked its answers.
    deployed = client.xcom(DAG_ID, run_id, "deploy")
    assert (deployed["target"], deployed["model_name"], deployed["version"], deployed["servers"]) == \
        ("local", MODEL, expected, 1)
    record = json.loads((run_dir / "deploy" / "deployment.json").read_text())
    assert record["version"] == expected
    assert record["instances"] == [{"instance_id": "local", "url": airflow_stack.serving_url, "changed": True,
                                    "previous": served_before}]
    assert client.xcom(DAG_ID, run_id, "verify")["servers"].keys() == {"local"}
    assert get_json(f"{airflow_stack.serving_url}/version")["version"] == expected

    # Task logs are readable through the API and hold the pipeline's own log lines.
    log = client.task_log(DAG_ID, run_id, "evaluate")
    assert f"evaluate: {evaluated['model_name']} v{expected}" in log
    assert "Done. Returned value was" in log
    # ... and no ERROR line in a successful run: Airflow logs what a task writes to stderr at that level (as it did
    # MLflow's artifact-download progress bars in every evaluate log).
    for stage in STAGES:
        entries = client.task_log_entries(DAG_ID, run_id, stage)
        errors = [entry for entry in entries if isinstance(entry, dict) and str(entry.get("level")).lower() == "error"]
        assert entries and not errors, f"{stage}: {errors[:3]}"


def test_new_champion_reaches_the_server_without_a_failed_request_and_rollback_returns(airflow_stack) -> None:
    """A forced promotion is deployed while a client polls the server; ml_rollback deploys the earlier one back."""
    client = airflow_stack.client
    client.wait_for_dag(DAG_ID, timeout=120)
    client.unpause(DAG_ID)
    registry = Registry(airflow_stack.mlflow_url)
    champion_before = registry.champion_or_none(MODEL)
    if champion_before is None:  # alone on a fresh stack: first a champion for the rollback to come back to
        first = client.trigger(DAG_ID, conf=FORCED, note="test_dag_run.py: a first champion")["dag_run_id"]
        client.wait_for_run(DAG_ID, first, timeout=300)
        champion_before = registry.champion(MODEL)
    assert served_version(airflow_stack.serving_url) == champion_before, "the server does not serve the champion"
    with Poller(airflow_stack.serving_url, WINE, pause=0.05) as poller:
        run_id = client.trigger(DAG_ID, conf=FORCED)["dag_run_id"]
        client.wait_for_run(DAG_ID, run_id, timeout=300)
    promoted = client.xcom(DAG_ID, run_id, "evaluate")
    assert promoted["promoted"] and promoted["gate_reason"] == "forced promotion"
    assert promoted["champion_version"] == promoted["version"] != champion_before
    assert not poller.failures(), poller.outcomes
    assert poller.versions() == {champion_before, promoted["version"]}
    assert get_json(f"{airflow_stack.serving_url}/version")["version"] == promoted["version"]

    # Not better and not forced (elasticnet untuned, tune off: the trigger form's switch): nothing is deployed,
    # and the server keeps the champion.
    kept = client.trigger(DAG_ID, conf={"model_family": "elasticnet", "tune": False})["dag_run_id"]
    client.wait_for_run(DAG_ID, kept, timeout=300)
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(DAG_ID, kept)}
    assert (states["tune"], states["train"]) == ("skipped", "success")
    assert (states["evaluate"], states["deploy"], states["verify"]) == ("success", "skipped", "skipped")
    assert "not deployed: version" in client.task_log(DAG_ID, kept, "deploy")
    assert get_json(f"{airflow_stack.serving_url}/version")["version"] == promoted["version"]

    client.wait_for_dag("ml_rollback", timeout=120)
    client.unpause("ml_rollback")
    with Poller(airflow_stack.serving_url, WINE, pause=0.05) as poller:
        rollback_id = client.trigger("ml_rollback", conf={"version": None})["dag_run_id"]
        client.wait_for_run("ml_rollback", rollback_id, timeout=180)
    moved = client.xcom("ml_rollback", rollback_id, "rollback")
    assert moved["champion_before"] == promoted["version"]
    assert int(moved["champion_after"]) < int(promoted["version"])
    assert moved["champion_after"] == champion_before  # the previous champion, whatever its number
    assert not poller.failures(), poller.outcomes
    assert get_json(f"{airflow_stack.serving_url}/version")["version"] == moved["champion_after"]
    # The server followed a new signed pointer: the earlier version, a higher sequence, marked as a rollback.
    from serving import pointer as pointers
    from serving import store as store_mod

    model_store = Path(airflow_stack.env["MLOPS_MODEL_STORE"])
    back = pointers.peek(store_mod.read_pointer(model_store))
    forward = pointers.peek(store_mod.read_pointer(model_store, store_mod.PREVIOUS))
    assert back is not None and forward is not None
    assert (back.version, back.rollback, forward.version) == (moved["champion_after"], True, promoted["version"])
    assert back.sequence > forward.sequence and pointers.read_applied(model_store).sequence == back.sequence

    import mlflow

    client_ml = mlflow.MlflowClient(airflow_stack.tracking_uri, registry_uri=airflow_stack.tracking_uri)
    aliases = client_ml.get_registered_model(promoted["model_name"]).aliases
    assert str(aliases["champion"]) == moved["champion_after"]
