"""`make demo`: run the ml_pipeline DAG once on the running stack and show what it did.

Triggers the DAG through Airflow's REST API, waits, prints each task's state, the tuning's best
trial, the gate's decision, the champion's test metrics (MAE among them) and a prediction from
the local prediction server the deploy task refreshed, then sends a few hundred wines to the
server (which captures them) and runs ml_monitor over that traffic, and leaves the Airflow and
MLflow UIs and the prediction server running.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.airflow_client import AirflowClient, DagRunFailed, stack_login  # noqa: E402

DAG_ID = "ml_pipeline"
MONITOR_DAG_ID = "ml_monitor"
TRAFFIC_ROWS = 300


def main() -> int:
    api, user, password = stack_login()  # the login `make up` printed (AIRFLOW_STACK_* settings)
    serving = f"http://127.0.0.1:{os.environ.get('AIRFLOW_STACK_SERVING_PORT', '8000')}"
    client = AirflowClient(api, user, password)

    client.wait_for_dag(DAG_ID)
    if client.dag(DAG_ID).get("is_paused"):
        # Unpausing also starts the latest nightly slot (catchup=False runs the most recent one).
        print(f"unpausing {DAG_ID}: it now also runs nightly on its schedule")
        client.unpause(DAG_ID)
    run_id = client.trigger(DAG_ID, note="make demo")["dag_run_id"]
    print(f"triggered {DAG_ID} run {run_id}; waiting (about a minute, longer if a scheduled run goes first) ...",
          flush=True)
    started = time.monotonic()
    try:
        client.wait_for_run(DAG_ID, run_id, timeout=900)
    except DagRunFailed as failed:
        print(failed, file=sys.stderr)
        return 1
    print(f"run succeeded in {time.monotonic() - started:.0f}s:")
    print(client.describe(DAG_ID, run_id))

    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(DAG_ID, run_id)}
    print()
    if states["tune_collect"] == "success":  # skipped when tuning is off
        tuned = client.xcom(DAG_ID, run_id, "tune_collect")  # the search's summary (tune's XCom: the workers)
        configured = " (params.yaml's model)" if tuned["best_trial"] == 0 else ""
        print(f"tune: best of {tuned['trials']} trials ({tuned['pruned']} pruned) is trial {tuned['best_trial']}"
              f"{configured}: {tuned['family']} {tuned['hyperparameters']}, cross-validated {tuned['metric']} "
              f"{tuned['cv_mean']:.4f} ± {tuned['cv_std']:.4f} on the training split")
    evaluated = client.xcom(DAG_ID, run_id, "evaluate")
    verdict = "PROMOTED" if evaluated["promoted"] else "kept the champion"
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in evaluated["champion_metrics"].items())
    print(f"gate: {verdict} - {evaluated['gate_reason']}")
    print(f"champion: {evaluated['model_name']} v{evaluated['champion_version']} on this test set: {metrics}")
    deploy_state = states["deploy"]
    if deploy_state == "success":
        print(f"deploy: version {evaluated['version']} is live on the prediction server")
    else:
        print(f"deploy: {deploy_state} (version {evaluated['version']} was not promoted; "
              "the server keeps the champion)")
    print(f"\n{_try_prediction(serving)}")
    print(f"\nAirflow UI:  {api}/dags/{DAG_ID}   (login {user} / {password})")
    print(f"MLflow run:  {evaluated['mlflow_run_url']}")
    print(f"Data Docs:   {client.links(DAG_ID, run_id, 'validate')['Data Docs']}")
    print(f"Predictions: {serving}   (a form at /, the API at /openapi.json, the model card at /model-card)")
    if _monitor(client, serving, client.xcom(DAG_ID, run_id, "transform")["test_path"]) != 0:
        return 1
    print("Everything keeps running; stop it with: make down")
    return 0


def _monitor(client: AirflowClient, serving: str, wines: str) -> int:
    """Traffic to the server (captured), then ml_monitor over it: its summary line and report link. The traffic
    is the run's test split: wines the model did not train on, as live ones would be."""
    from include.ml.configuration import project_config

    version, sent = _send_traffic(serving, wines)
    capture = Path(project_config().monitoring.capture_dir)
    print(f"\nsent {sent} wines of the test split to {serving}/invocations (v{version} answered); waiting for the "
          f"capture files in {capture} ...", flush=True)
    deadline = time.monotonic() + float(os.environ.get("DEMO_CAPTURE_WAIT_SECONDS", "90"))
    while _captured(capture, version) < sent and time.monotonic() < deadline:
        time.sleep(2)  # the server closes a file every SERVING_CAPTURE_ROTATE_SECONDS
    client.wait_for_dag(MONITOR_DAG_ID)
    if client.dag(MONITOR_DAG_ID).get("is_paused"):
        client.unpause(MONITOR_DAG_ID)
    run_id = client.trigger(MONITOR_DAG_ID, note="make demo")["dag_run_id"]
    try:
        client.wait_for_run(MONITOR_DAG_ID, run_id, timeout=300)
    except DagRunFailed as failed:
        print(failed, file=sys.stderr)
        return 1
    monitored = client.xcom(MONITOR_DAG_ID, run_id, "monitor")
    print(f"monitor: {monitored['summary']}")
    print(f"Monitoring report: {client.links(MONITOR_DAG_ID, run_id, 'monitor')['Monitoring report']}")
    print(f"MLflow monitoring run: {monitored['mlflow_run_url']}")
    return 0


def _send_traffic(serving: str, wines: str) -> tuple[str, int]:
    """Up to TRAFFIC_ROWS rows of the parquet file `wines`, 20 per /invocations request; (the version that
    answered, rows sent)."""
    import urllib.request

    import pandas as pd

    frame = pd.read_parquet(wines).drop(columns=["quality"]).head(TRAFFIC_ROWS)
    version = "?"
    for start in range(0, len(frame), 20):
        part = frame.iloc[start:start + 20]
        body = json.dumps({"dataframe_split": {"columns": list(part.columns), "data": part.to_numpy().tolist()}})
        request = urllib.request.Request(f"{serving}/invocations", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            version = response.headers.get("X-Model-Version", version)
    return version, len(frame)


def _captured(capture: Path, version: str) -> int:
    """Rows of `version` in the closed capture files (any model: the demo serves one)."""
    import gzip

    rows = 0
    for path in capture.glob("*/*/*.jsonl.gz"):
        with gzip.open(path, "rt") as lines:
            rows += sum(json.loads(line).get("model_version") == version for line in lines)
    return rows


def _try_prediction(serving: str) -> str:
    """One request to the prediction server with the first wine of the dataset, shown as a curl command."""
    import csv
    import urllib.error
    import urllib.request

    with open(REPO / "data" / "wine-quality" / "winequality-red.csv", newline="") as f:
        row = next(csv.DictReader(f, delimiter=";"))
    row.pop("quality")
    body = json.dumps({k: float(v) for k, v in row.items()})
    request = urllib.request.Request(f"{serving}/predict", body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return f"prediction server at {serving} did not answer: {exc}"
    return f"$ curl -s {serving}/predict -H 'Content-Type: application/json' -d '{body}'\n{answer}"


if __name__ == "__main__":
    sys.exit(main())
