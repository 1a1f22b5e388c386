"""`python main.py predict --explain` (include/release/batch.py's predict_file with explain) answers what a real
gunicorn prediction server's `POST /explain` answers for the same rows, for every family x task, on the table of
every column type (a one-hot column, datetimes, an ordinal, encoded categories): the same predictions, the same base
value and the same contribution per input column, under the input column's own name.

Each model is fitted by the pipeline's own pipeline builder on 400 rows (10 trees, 20 boosting iterations),
registered in a real MLflow store, exported and explained by batch prediction, then served from the very bundle
batch prediction exported."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from include.ml.entities import BatchConfig, BatchPredictionConfig, DataSourceConfig, MlflowConfig
from include.release import batch_explain
from include.release.batch import predict_file
from serving import engine
from tests.support import typed
from tests.support.bundles import register_model
from tests.support.network import free_port, get_json
from tests.support.pointers import point
from tests.support.servers import PredictionServer
from tests.support.signing import signing_config

pytestmark = pytest.mark.integration  # real gunicorn servers

FAMILIES = ("elasticnet", "random_forest", "extra_trees", "hist_gradient_boosting")
TASKS = ("regression", "classification")
ROWS = 24


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A real SQLite MLflow store; yields its directory and an experiment id."""
    import mlflow

    root = tmp_path_factory.mktemp("explain-registry")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()  # process-wide: put back once done
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{root}/mlflow.db")
    experiment = mlflow.create_experiment("explain", artifact_location=(root / "art").as_uri())
    yield root, experiment
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def explained_by_batch(root: Path, experiment: str, task: str, family: str, rows: pd.DataFrame,
                       tmp_path: Path) -> tuple[pd.DataFrame, Path, str]:
    """Register the family's model, then `predict --explain` the rows (a CSV with the id and ignore columns) into
    Parquet; returns the output, the model store batch prediction exported the version to, and the version."""
    from include.ml.components.training import skops_trusted_types

    name = f"explain-{family}-{task}"
    pipeline, x = typed.fitted(task, family)
    version = register_model(name, experiment, pipeline, x, typed.schema(task),
                             skops_trusted_types(pipeline, family))
    store = tmp_path / "store"
    config = BatchPredictionConfig(typed.schema(task), DataSourceConfig(uri="unused.csv"), BatchConfig(chunk_rows=10),
                                   MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                                artifact_location=(root / "art").as_uri(), registered_model_name=name),
                                   store, signing_config())
    source = tmp_path / "in.csv"
    rows.to_csv(source, index=False)
    result = predict_file(config, str(source), str(tmp_path / "out.parquet"), version, explain=True)
    assert result.rows == ROWS and result.explained is not None
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == result.columns
    return out, store, version


def served_explanations(store: Path, version: str, records: list[dict[str, Any]], log: Path) -> dict[str, Any]:
    point(store, version)
    with PredictionServer(store, free_port(), log, workers=1) as server:
        assert get_json(f"{server.url}/version")["version"] == version
        body = json.dumps({"dataframe_records": records}).encode()
        request = urllib.request.Request(f"{server.url}/explain", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_server_explain_equals_batch_explain(registry: tuple[Path, str], tmp_path: Path, family: str,
                                             task: str) -> None:
    rows = typed.requests(task, ROWS, seed=11)
    out, store, version = explained_by_batch(*registry, task, family, rows, tmp_path)
    served = served_explanations(store, version, typed.as_records(rows), tmp_path / "gunicorn.log")

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
