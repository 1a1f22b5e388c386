"""`python main.py predict --explain` (include/release/batch.py's predict_file with explain) answers what a real
gunicorn prediction server's `POST /explain` answers for the same rows, for every family x task, on the table of
every column type (a one-hot column, datetimes, an ordinal, encoded categories): the same predictions, the same base
value and the same contribution per input column, under the input column's own name.

Each model is fitted by the pipeline's own pipeline builder on 400 rows (10 trees, 20 boosting iterations),
registered in a real MLflow store as a version of one model, exported and explained by batch prediction, then served
from the very bundle batch prediction exported, by one server the store's CURRENT is pointed along."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from include.ml.config_file import BatchConfig, DataSourceConfig, MlflowConfig
from include.ml.entities import BatchPredictionConfig
from include.release import batch_explain
from include.release.batch import predict_file
from serving import engine
from tests.support import typed
from tests.support.bundles import register_model
from tests.support.network import free_port, get_json, wait_until
from tests.support.pointers import point
from tests.support.registry import sqlite_store
from tests.support.servers import PredictionServer
from tests.support.signing import signing_config

pytestmark = pytest.mark.integration  # real gunicorn servers

FAMILIES = ("elasticnet", "random_forest", "extra_trees", "hist_gradient_boosting")
TASKS = ("regression", "classification")
ROWS = 24


MODEL = "explained"  # one registered model, a version per family x task, exported into one store


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real SQLite MLflow store; yields its directory."""
    root = tmp_path_factory.mktemp("explain-registry")
    with sqlite_store(root, "explain"):
        yield root


@pytest.fixture(scope="module")
def server(registry: Path) -> Iterator[PredictionServer]:
    """One gunicorn server (one worker) on the store batch prediction exports every version into; each test points
    the store's CURRENT at its version and waits for the server to serve it (a hot swap, as a deployment does)."""
    with PredictionServer(registry / "store", free_port(), registry / "gunicorn.log", workers=1) as started:
        yield started


def explained_by_batch(root: Path, task: str, family: str, rows: pd.DataFrame,
                       tmp_path: Path) -> tuple[pd.DataFrame, str]:
    """Register the family's model, then `predict --explain` the rows (a CSV with the id and ignore columns) into
    Parquet, the version exported into the server's store; returns the output and the version."""
    import mlflow

    from include.ml.components.training import skops_trusted_types

    pipeline, x = typed.fitted(task, family)
    version = register_model(MODEL, mlflow.get_experiment_by_name("explain").experiment_id, pipeline, x,
                             typed.schema(task), skops_trusted_types(pipeline, family))
    config = BatchPredictionConfig(typed.schema(task), DataSourceConfig(uri="unused.csv"), BatchConfig(chunk_rows=10),
                                   MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                                artifact_location=(root / "art").as_uri(), registered_model_name=MODEL),
                                   root / "store", signing_config())
    source = tmp_path / "in.csv"
    rows.to_csv(source, index=False)
    result = predict_file(config, str(source), str(tmp_path / "out.parquet"), version, explain=True)
    assert result.rows == ROWS and result.explained is not None
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == result.columns
    return out, version


def served_version(server: PredictionServer) -> str | None:
    try:
        return get_json(f"{server.url}/version")["version"]
    except urllib.error.HTTPError:  # 503 until the server has loaded a first version
        return None


def served_explanations(server: PredictionServer, version: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    point(server.store, version)
    wait_until(lambda: served_version(server) == version, timeout=60)
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(f"{server.url}/explain", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["X-Model-Version"] == version
        return json.loads(response.read())


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_server_explain_equals_batch_explain(registry: Path, server: PredictionServer, tmp_path: Path, family: str,
                                             task: str) -> None:
    rows = typed.requests(task, ROWS, seed=11)
    out, version = explained_by_batch(registry, task, family, rows, tmp_path)
    served = served_explanations(server, version, typed.as_records(rows))

    inputs = list(typed.FEATURES)
    assert out[typed.ID].tolist() == rows[typed.ID].tolist()
    assert [c for c in out.columns if c.startswith(batch_explain.CONTRIBUTION_PREFIX)] == \
        [batch_explain.CONTRIBUTION_PREFIX + c for c in inputs]  # the input columns, one-hot and datetimes included
    explanations = served["explanations"]
    assert len(explanations) == len(served["predictions"]) == ROWS
    # /explain answers the estimator's own predictions (what the explanation adds up to); the file holds the
    # predictor's (ONNX Runtime), which agrees with them to the tolerances the server checks at load.
    if task == "regression":
        np.testing.assert_allclose(out["prediction"], served["predictions"], rtol=engine.REGRESSION_RTOL,
                                   atol=engine.REGRESSION_RTOL)
        bases = [e["base_value"] for e in explanations]
        contributions = [e["contributions"] for e in explanations]
        # the identity: what is explained is the prediction
        np.testing.assert_allclose(out[batch_explain.OUTPUT_COLUMN], served["predictions"], rtol=1e-6)
    else:
        labels = out["prediction"].astype(str).tolist()
        for label, probabilities in zip(labels, served["probabilities"]):  # the same class, or one tied with it
            assert probabilities[label] >= max(probabilities.values()) - engine.PROBABILITY_ATOL
        explained = out[batch_explain.CLASS_COLUMN].tolist()
        if len(served["classes"]) > 1:  # an output per class: the predicted class's
            assert explained == labels
        else:  # binary log-odds: the positive class's
            assert set(explained) == set(served["classes"])
        bases = [e["base_value"][cls] for e, cls in zip(explanations, explained)]
        contributions = [e["contributions"][cls] for e, cls in zip(explanations, explained)]
    assert all(sorted(c) == sorted(inputs) for c in contributions)  # summed back to the columns the client sent
    np.testing.assert_allclose(out[batch_explain.BASE_COLUMN], bases, rtol=1e-9, atol=1e-12)
    for column in inputs:
        np.testing.assert_allclose(out[batch_explain.CONTRIBUTION_PREFIX + column], [c[column] for c in contributions],
                                   rtol=1e-9, atol=1e-12, err_msg=column)
    np.testing.assert_allclose(out[batch_explain.OUTPUT_COLUMN],
                               out[batch_explain.BASE_COLUMN] + out[[batch_explain.CONTRIBUTION_PREFIX + c
                                                                     for c in inputs]].sum(axis=1), rtol=1e-9)
    # The datetime's derived columns (hour, cyclical parts) come back as the datetime's: the target depends on it.
    assert (out[batch_explain.CONTRIBUTION_PREFIX + "time_hour"] != 0).any()
