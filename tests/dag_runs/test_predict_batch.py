"""Batch prediction end to end: `python main.py predict` against a real gunicorn's /invocations, and the
ml_batch_predict DAG through the session's real Airflow stack (its registry, its model store, its keys); and a
flights-like model trained by `python main.py` (ids, an ignore column, a datetime, an ordinal, open categories)
scored by `python main.py predict --on-bad-rows flag`."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from serving.engine import REGRESSION_RTOL
from tests.support.batch_tables import FEATURES, FLIGHTS_SCHEMA, flights_like
from tests.support.bundles import copy_store
from tests.support.network import free_port
from tests.support.pointers import point
from tests.support.project import WINE_CSV, outputs_env, run_main
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
                                note="tests/dag_runs/test_predict_batch.py: a champion to score with")["dag_run_id"]
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
    store = copy_store(Path(airflow_stack.env["MLOPS_MODEL_STORE"]), tmp_path / "store")
    point(store, champion, private_key=Path(airflow_stack.env["MLOPS_SIGNING_KEY"]))  # signed as the stack signs
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

    run_id = client.trigger(DAG_ID, conf={"input": str(source), "output": str(output),
                                          "on_bad_rows": "skip"})["dag_run_id"]
    client.wait_for_run(DAG_ID, run_id, timeout=180)
    assert sorted((ti["task_id"], ti["state"], ti["try_number"]) for ti in client.task_instances(DAG_ID, run_id)) \
        == [("combine", "success", 1), ("plan", "success", 1), ("score", "success", 1)]  # batch.partitions: 1
    summary = client.xcom(DAG_ID, run_id, "combine")
    assert (summary["rows"], summary["chunks"], summary["model_version"]) == (1599, 1, champion)
    assert (summary["on_bad_rows"], summary["rejected"], summary["rejected_uri"]) == \
        ("skip", 0, f"{output}.rejected.csv")
    scored = pd.read_csv(output, sep=";")
    assert scored["prediction"].tolist() == cli_output["prediction"].tolist()  # the same code path as the CLI
    assert Path(f"{output}.rejected.csv").read_text() == "row;id;column;expectation;expected;value\n"  # none bad

    # The repo's own copy of the file is outside the allow-list: the task fails at once (no retry), writing nothing.
    refused = client.trigger(DAG_ID, conf={"input": str(WINE_CSV),
                                           "output": str(airflow_stack.batch_outputs / "refused.csv")})
    client.wait_for_run(DAG_ID, refused["dag_run_id"], timeout=180, expect="failed")
    states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in client.task_instances(DAG_ID,
                                                                                         refused["dag_run_id"])}
    assert states["plan"] == ("failed", 1)
    assert "is refused: it is not under any allowed source" in client.task_log(DAG_ID, refused["dag_run_id"], "plan")
    assert not (airflow_stack.batch_outputs / "refused.csv").exists()


def test_a_model_trained_by_main_scores_every_role_and_type_and_flags_bad_rows(tmp_path: Path) -> None:
    """`python main.py` trains hist_gradient_boosting on 2,000 flights-like rows (targets missing in some: dropped);
    `python main.py predict --on-bad-rows flag` scores 300 others, four of them bad. The good rows get the
    registered model's own predictions, row for row; the bad ones are kept without one, their reasons beside."""
    config_dir = tmp_path / "flights"
    config_dir.mkdir()
    # No missing plate in training: the input example MLflow saves with the model would then hold NaN for one, which
    # the export's self-check refuses (serving/inputs: "expected a string, got float"). Scored rows have them.
    train = flights_like(2000, seed=11, missing_plates=0)
    train.loc[::40, "arr_delay"] = None
    train.to_csv(tmp_path / "train.csv", index=False)
    (config_dir / "config.yaml").write_text(yaml.safe_dump({
        "data_source": {"uri": str(tmp_path / "train.csv")}, "mlflow": {"registered_model_name": "flights-batch"}}))
    (config_dir / "params.yaml").write_text(yaml.safe_dump({
        "model": {"family": "hist_gradient_boosting", "hyperparameters": {"max_iter": 50}},
        "promotion": {"metric": "rmse"}}))
    (config_dir / "schema.yaml").write_text(yaml.safe_dump(FLIGHTS_SCHEMA, sort_keys=False))
    env = {**outputs_env(tmp_path / "outputs"), "MLOPS_DEPLOY_TARGET": "none"}
    trained = run_main("--config-dir", str(config_dir), env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]

    score = flights_like(300, seed=12).drop(columns="arr_delay")
    score["flight_id"] = score["flight_id"] + 50_000
    score.loc[[3, 4], "dest"] = "NEVER-SEEN"  # an open category: scored
    score.loc[10, "time_hour"] = "31/12/2013"  # neither the column's format nor ISO 8601
    score.loc[150, "cut"] = "Superb"  # not one of the ordinal's categories
    score.loc[151, "carrier"] = "Z"  # not an allowed carrier
    score.loc[299, "dep_delay"] = -99.0  # under min
    source, output = tmp_path / "score.csv", tmp_path / "scored" / "flights.csv"
    score.to_csv(source, index=False)
    done = run_main("predict", "--config-dir", str(config_dir), "--input", str(source), "--output", str(output),
                    "--on-bad-rows", "flag", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "300 rows in 1 chunk(s) scored with flights-batch version 1" in done.stdout
    assert f"4 bad row(s) flagged, without a prediction, reasons in {output}.rejected.csv" in done.stdout

    out = pd.read_csv(output)
    assert list(out.columns) == ["flight_id", "leg", "prediction", "model_name", "model_version", "rejected"]
    assert out["flight_id"].tolist() == score["flight_id"].tolist() and out["leg"].tolist() == score["leg"].tolist()
    bad = [10, 150, 151, 299]
    assert out.index[out["rejected"]].tolist() == bad and out.loc[bad, "prediction"].isna().all()
    good = [i for i in range(300) if i not in bad]
    assert out.loc[good, "prediction"].tolist() == registered_predictions(env, "models:/flights-batch/1",
                                                                          pd.read_csv(source).loc[good, FEATURES])
    rejected = pd.read_csv(f"{output}.rejected.csv")
    assert rejected[["row", "flight_id", "column", "expectation"]].values.tolist() == [
        [10, 50_010, "time_hour", "expect_column_values_to_be_in_type_list"],
        [150, 50_150, "cut", "expect_column_values_to_be_in_set"],
        [151, 50_151, "carrier", "expect_column_values_to_be_in_set"],
        [299, 50_299, "dep_delay", "expect_column_values_to_be_between"]]
    assert rejected["value"].tolist() == ["31/12/2013", "Superb", "Z", "-99.0"]

    # The same file in 3 partitions into a Parquet dataset directory (an output ending in "/"): the same rows and
    # predictions, one part file per partition, the same side file beside the directory.
    dataset = tmp_path / "scored" / "flights"
    done = run_main("predict", "--config-dir", str(config_dir), "--input", str(source), "--output", f"{dataset}/",
                    "--on-bad-rows", "flag", "--partitions", "3", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in dataset.iterdir()) == ["_manifest.json", *(f"part-{i:05d}.parquet" for i in range(3))]
    parts = pd.read_parquet(dataset)
    assert parts["flight_id"].tolist() == out["flight_id"].tolist()
    assert parts["rejected"].tolist() == out["rejected"].tolist()
    pd.testing.assert_series_equal(parts["prediction"], out["prediction"], check_exact=False, rtol=1e-12)
    assert Path(f"{dataset}.rejected.csv").read_text() == Path(f"{output}.rejected.csv").read_text()


def registered_predictions(env: dict[str, str], uri: str, features: pd.DataFrame) -> Any:
    """The registered model's own predictions (its fitted pipeline, loaded with the serving allow-list), within the
    tolerance the server's engine is held to (ONNX Runtime scores this model: it agrees that closely)."""
    import mlflow

    from include.ml import registry

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(env["MLOPS_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLOPS_TRACKING_URI"])
    try:
        predicted = registry.load_model(uri).predict(features).tolist()
        return pytest.approx(predicted, rel=REGRESSION_RTOL, abs=REGRESSION_RTOL)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
