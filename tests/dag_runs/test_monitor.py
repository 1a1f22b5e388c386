"""ml_monitor on the real stack: traffic to the real prediction server (part of it shifted) is captured by the
server itself, ml_monitor finds exactly the shifted features, writes its report to the artifacts and MLflow,
emits the drift Asset event, and that event starts an ml_pipeline run (the stack's config: retrain_on drift).

A forced ml_pipeline run first makes a fresh champion, so that the captured rows of its version are this test's
traffic only (other tests' pollers send one wine over and over to earlier versions).
"""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import requests

from include.ml.artifacts import safe_run_id
from tests.support.capture import captured_rows, post_rows
from tests.support.project import WINE_CSV

pytestmark = pytest.mark.integration

MODEL = "wine-quality"
FORCED = {"model_family": "elasticnet", "force_promote": True}
SHIFTED = ["volatile acidity", "alcohol"]  # in schema order, as the monitor lists them


def shifted_traffic() -> pd.DataFrame:
    """600 wines: the first 200 as they are, the rest with two features moved by about one sd (within the
    schema's ranges, so that the server accepts them)."""
    wines = pd.read_csv(WINE_CSV, sep=";").drop(columns=["quality"]).sample(600, random_state=7).reset_index(drop=True)
    moved = wines.index >= 200
    wines.loc[moved, "alcohol"] = np.minimum(wines.loc[moved, "alcohol"] + 1.5, 16.0)
    wines.loc[moved, "volatile acidity"] = np.minimum(wines.loc[moved, "volatile acidity"] + 0.3, 2.0)
    return wines


def asset_events(client, name: str, **filters: str) -> list[dict]:
    asset = next(a for a in client.get("assets", name_pattern=name)["assets"] if a["name"] == name)
    return client.get("assets/events", asset_id=asset["id"], **filters)["asset_events"]


def test_drift_in_captured_traffic_is_reported_signalled_and_starts_a_retrain(airflow_stack) -> None:
    client = airflow_stack.client
    for dag_id in ("ml_pipeline", "ml_monitor"):
        client.wait_for_dag(dag_id, timeout=120)
        client.unpause(dag_id)
    started = time.monotonic()
    champion_run = client.trigger("ml_pipeline", conf=FORCED, note="test_monitor.py: a fresh champion")["dag_run_id"]
    client.wait_for_run("ml_pipeline", champion_run, timeout=300)
    version = client.xcom("ml_pipeline", champion_run, "evaluate")["version"]
    capture_dir = airflow_stack.env["MLOPS_CAPTURE_DIR"]

    traffic = shifted_traffic()
    answered = post_rows(airflow_stack.serving_url, traffic, batch=25)
    assert answered == {version}, "the server did not answer with the fresh champion"
    deadline = time.monotonic() + 60
    while captured_rows(capture_dir, MODEL, version) < len(traffic) and time.monotonic() < deadline:
        time.sleep(1)  # the server closes its capture files every 2 s (SERVING_CAPTURE_ROTATE_SECONDS)
    time.sleep(3)  # and the last one
    captured = captured_rows(capture_dir, MODEL, version)
    assert len(traffic) <= captured <= len(traffic) + 10  # + the deploy's verify probes (the input example)

    run_id = client.trigger("ml_monitor", note="test_monitor.py")["dag_run_id"]
    client.wait_for_run("ml_monitor", run_id, timeout=300)
    airflow_stack.timings["ml_monitor: fresh champion, traffic, monitor run (s)"] = time.monotonic() - started
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances("ml_monitor", run_id)}
    assert states == {"plan": "success", "partial": "success", "monitor": "success", "signal_drift": "success"}
    monitored = client.xcom("ml_monitor", run_id, "monitor")
    assert (monitored["version"], monitored["drifted"]) == (version, SHIFTED)
    assert monitored["rows"]["current"] == captured and not monitored["not_enough_data"]
    log = client.task_log("ml_monitor", run_id, "monitor")
    assert "monitor: drift in wine-quality" in log and "alcohol: ks " in log and "volatile acidity: ks " in log

    # The report: in the run's artifacts, behind the task's link (with a login), and in MLflow.
    report = airflow_stack.artifacts_root / safe_run_id(run_id) / "monitor" / "report.html"
    assert report.is_file() and '<tr class="drifted"><td>volatile acidity</td>' in report.read_text()
    assert not (report.parent.parent / "monitor-partials").exists()  # the partials, merged, are removed
    link = client.links("ml_monitor", run_id, "monitor")["Monitoring report"]
    assert link == f"{airflow_stack.api_url}/mlops/monitoring/{safe_run_id(run_id)}/report.html"
    assert requests.get(link, timeout=30).status_code == 401
    page = client.fetch(link)
    assert page.status_code == 200 and "alcohol" in page.text and "data:image/png;base64," in page.text
    assert client.fetch(link.replace("report.html", "summary.json")).json()["drifted"] == SHIFTED
    for escape in ("..%2Fvalidate%2Fresult.json", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%00"):
        assert client.fetch(link.replace("report.html", escape)).status_code == 404, escape
    run = requests.get(f"{airflow_stack.mlflow_url}/api/2.0/mlflow/runs/get",
                       params={"run_id": monitored["mlflow_run_id"]}, timeout=30).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert (tags["model_name"], tags["model_version"]) == (MODEL, version)
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["alcohol.drifted"] == 1.0 and metrics["pH.drifted"] == 0.0 and metrics["drifted_features"] == 2
    artifacts = requests.get(f"{airflow_stack.mlflow_url}/api/2.0/mlflow/artifacts/list",
                             params={"run_id": monitored["mlflow_run_id"]}, timeout=30).json()["files"]
    assert {f["path"] for f in artifacts} == {"report.html", "summary.json"}

    # The ml_pipeline run the drift Asset event started, and the event itself (read once that run has started:
    # Airflow 3.3's events endpoint answers 500 while a run it created is queued, apache/airflow#71360).
    monitored_at = datetime.fromisoformat(client.dag_run("ml_monitor", run_id)["start_date"])
    deadline, retrain = time.monotonic() + 120, []
    while not retrain and time.monotonic() < deadline:
        time.sleep(2)
        retrain = [r for r in client.get("dags/ml_pipeline/dagRuns", run_type=["asset_triggered"])["dag_runs"]
                   if datetime.fromisoformat(r["run_after"]) >= monitored_at and r["start_date"]]
    assert retrain, "no asset-triggered ml_pipeline run started from the drift event"
    events = asset_events(client, f"{MODEL}-drift", source_dag_id="ml_monitor", source_run_id=run_id)
    assert len(events) == 1 and events[0]["source_task_id"] == "signal_drift"
    assert retrain[0]["dag_run_id"] in [r["run_id"] for r in events[0]["created_dagruns"]]
    # Let it finish: the other tests of the session count the registry's versions around their own runs.
    client.wait_for_run("ml_pipeline", retrain[0]["dag_run_id"], timeout=400)
