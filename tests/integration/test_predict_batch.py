"""Batch prediction end to end: `python main.py predict` against a real gunicorn's /invocations, and the
ml_batch_predict DAG through the session's real Airflow stack (its registry, its model store, its keys)."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.support.bundles import copy_store
from tests.support.network import free_port
from tests.support.project import WINE_CSV, run_main
from tests.support.registry import Registry
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration

DAG_ID = "ml_batch_predict"
MODEL = "wine-quality"  # include/config's registered model: what the stack's ml_pipeline runs register
TARGET = "quality"


@pytest.fixture(scope="module")
def champion(airflow_stack: Any) -> str:
    """The stack's champion; when no test has made one yet, a quick forced ml_pipeline run (elasticnet) does. (The
    file's name sorts it after the DAG tests, so a whole session's run usually has one already.)"""
    registry = Registry(airflow_stack.mlflow_url)
    if registry.champion_or_none(MODEL) is None:
        client = airflow_stack.client
        client.wait_for_dag("ml_pipeline", timeout=120)
        client.unpause("ml_pipeline")
        run_id = client.trigger("ml_pipeline", conf={"model_family": "elasticnet", "force_promote": True},
                                note="tests/integration/test_predict_batch.py: a champion to score with")["dag_run_id"]
        client.wait_for_run("ml_pipeline", run_id, timeout=300)
    return registry.champion(MODEL)


@pytest.fixture(scope="module")
def cli_output(airflow_stack: Any, champion: str, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """`python main.py predict` on the wine file (target column included) with the stack's configuration."""
    out = tmp_path_factory.mktemp("batch-cli") / "wine-predictions.parquet"
    done = run_main("predict", "--input", str(WINE_CSV), "--output", str(out), env=airflow_stack.env)
    assert done.returncode == 0, done.stderr
    assert f"1,599 rows in 1 chunk(s) scored with {MODEL} version {champion}" in done.stdout
    return pd.read_parquet(out)


def invocations(url: str, frame: pd.DataFrame) -> tuple[list[float], str]:
    body = json.dumps({"dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}}).encode()
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"], response.headers["X-Model-Version"]


def test_cli_answers_as_the_prediction_server(airflow_stack: Any, champion: str, cli_output: pd.DataFrame,
                                              tmp_path: Path) -> None:
    wine = pd.read_csv(WINE_CSV, sep=";")
    # A gunicorn server on the bundle the batch run exported into the stack's model store.
    store = copy_store(Path(airflow_stack.env["MLOPS_MODEL_STORE"]), tmp_path / "store", current=champion)
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log",
                          SERVING_PUBLIC_KEY=airflow_stack.env["MLOPS_SIGNING_PUBLIC_KEY"]) as server:
        served, version = invocations(server.url, wine.drop(columns=TARGET))
    assert version == champion and len(served) == len(wine) == len(cli_output)
    assert cli_output["id"].tolist() == list(range(len(wine)))
    assert all(math.isclose(batch, answer, rel_tol=1e-9)
               for batch, answer in zip(cli_output["prediction"], served, strict=True))
    assert set(cli_output["model_name"]) == {MODEL} and set(cli_output["model_version"]) == {champion}


def test_dag_scores_an_allowed_file_and_refuses_another(airflow_stack: Any, champion: str,
                                                        cli_output: pd.DataFrame) -> None:
    client = airflow_stack.client
    client.wait_for_dag(DAG_ID, timeout=120)
    client.unpause(DAG_ID)
    source = airflow_stack.sources / "wine-to-score.csv"  # under the stack's data_source.allowed_sources
    pd.read_csv(WINE_CSV, sep=";").drop(columns=TARGET).to_csv(source, sep=";", index=False)
    output = airflow_stack.batch_outputs / "scored.csv"  # under the stack's batch.allowed_outputs

    run_id = client.trigger(DAG_ID, conf={"input": str(source), "output": str(output)})["dag_run_id"]
    client.wait_for_run(DAG_ID, run_id, timeout=180)
    assert [(ti["task_id"], ti["state"], ti["try_number"]) for ti in client.task_instances(DAG_ID, run_id)] == \
        [("predict", "success", 1)]
    summary = client.xcom(DAG_ID, run_id, "predict")
    assert (summary["rows"], summary["chunks"], summary["model_version"]) == (1599, 1, champion)
    scored = pd.read_csv(output, sep=";")
    assert scored["prediction"].tolist() == cli_output["prediction"].tolist()  # the same code path as the CLI

    # The repo's own copy of the file is outside the allow-list: the task fails at once (no retry), writing nothing.
    refused = client.trigger(DAG_ID, conf={"input": str(WINE_CSV),
                                           "output": str(airflow_stack.batch_outputs / "refused.csv")})
    client.wait_for_run(DAG_ID, refused["dag_run_id"], timeout=180, expect="failed")
    (task,) = client.task_instances(DAG_ID, refused["dag_run_id"])
    assert (task["state"], task["try_number"]) == ("failed", 1)
    assert "is refused: it is not under any allowed source" in client.task_log(DAG_ID, refused["dag_run_id"],
                                                                               "predict")
    assert not (airflow_stack.batch_outputs / "refused.csv").exists()
