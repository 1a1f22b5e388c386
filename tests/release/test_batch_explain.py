"""Batch prediction's explanation columns (include/release/batch_explain.py, `python main.py predict --explain`) on
tiny models: the columns, the slice of each row explained, the identity with the model's output, calls bounded in
rows whatever the chunk, and the hook in predict_file (flagged rows, key clashes, the result)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from include.ml.config_file import BatchConfig, DataSourceConfig, MlflowConfig
from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError
from include.release import batch_explain
from include.release.batch import encoded_width, predict_file
from serving.inputs import validate
from serving.model import LoadedModel, load_bundle
from tests.support import frames
from tests.support.bundles import REGRESSION, install_bundle, make_bundle, register_toy_model, toy_frame
from tests.support.registry import sqlite_store
from tests.support.signing import signing_config, trusted_keys

INPUTS = ["x1", "x2", "count", "kind"]  # tests/support/bundles.py's toy features


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """"r": a 5-tree forest regressor, "c": a 5-tree forest of 3 classes, "b": a 2-class histogram gradient
    boosting (explained in log-odds: one output), "e": a 3-class logistic regression (elasticnet)."""
    from include.ml.components.training import skops_trusted_types

    store = tmp_path_factory.mktemp("explain-store")
    make_bundle(store, "r")
    make_bundle(store, "c", task="classification")
    make_bundle(store, "e", task="classification", family="elasticnet", hyperparameters={"C": 1.0})
    data = frames.imbalanced_dataset(400)
    x, y = data.drop(columns="y"), data["y"]
    schema = frames.schema("classification")
    pipeline = frames.pipeline_for(schema, "hist_gradient_boosting", {"max_iter": 10}).fit(x, y)
    install_bundle(store, "b", pipeline, x, schema, skops_trusted_types(pipeline, "hist_gradient_boosting"))
    return store


def loaded(store: Path, version: str) -> LoadedModel:
    return load_bundle(store / version, trusted_keys())


def columns_of(model: LoadedModel, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns the server builds from these rows (what batch prediction hands the predictor)."""
    features = [f.name for f in model.contract.features]
    records = frame[features].astype(object).where(frame[features].notna(), None).to_dict(orient="records")
    return validate(records, model.contract, max_rows=len(records)).columns


def explained(model: LoadedModel, frame: pd.DataFrame, rows: int | None = None) -> tuple[pd.DataFrame, Any]:
    """The explanation columns of `frame` (calls of `rows` rows, else as sized for 64 MiB) and the predictions."""
    explainer = batch_explain.BatchExplainer.for_model(model, encoded_width(model), 64)
    if rows:
        explainer = dataclasses.replace(explainer, rows=rows)
    columns = columns_of(model, frame)
    predictions = model.sklearn_predict(columns)[0]
    return pd.DataFrame(explainer.explain(columns, predictions)), predictions


def test_rows_per_call_bounded_by_memory_and_a_cap() -> None:
    assert batch_explain.explain_rows(3000, 3, 64) == 64 * 2**20 // (3000 * 4 * 8) == 699
    assert batch_explain.explain_rows(3000, 1, 64) == 64 * 2**20 // (3000 * 2 * 8)
    assert batch_explain.explain_rows(10, 1, 64) == batch_explain.EXPLAIN_ROWS_MAX  # narrow: the cap
    assert batch_explain.explain_rows(10**9, 5, 1) == 1  # at least one


def test_regression_columns_identity_and_calls_of_few_rows(store: Path) -> None:
    model = loaded(store, "r")
    frame = toy_frame("regression", rows=40, seed=3)
    whole, predictions = explained(model, frame)
    pieces, _ = explained(model, frame, rows=7)  # 6 calls, the last of 5 rows

    assert list(whole.columns) == [*(f"contribution:{c}" for c in INPUTS), "explain_base_value", "explain_output"]
    pd.testing.assert_frame_equal(whole, pieces, rtol=1e-12)
    np.testing.assert_allclose(whole["explain_output"], predictions, rtol=1e-6)  # base + contributions = prediction
    assert whole["explain_base_value"].nunique() == 1  # one base value: the model's mean output
    assert (whole[[f"contribution:{c}" for c in INPUTS]] != 0).any().all()


def test_multiclass_probability_slice_is_the_predicted_class(store: Path) -> None:
    model = loaded(store, "c")
    frame = toy_frame("classification", rows=30, seed=4)
    out, predictions = explained(model, frame, rows=4)
    probabilities = model.estimator.predict_proba(frame[INPUTS])
    classes = [str(c) for c in model.estimator.classes_]

    assert out["explain_class"].tolist() == [str(p) for p in predictions]
    assert len(set(out["explain_class"])) > 1
    picked = probabilities[np.arange(len(frame)), [classes.index(c) for c in out["explain_class"]]]
    np.testing.assert_allclose(out["explain_output"], picked, rtol=1e-6)  # the predicted class's probability


def test_multiclass_logistic_slice_is_the_predicted_class(store: Path) -> None:
    model = loaded(store, "e")
    frame = toy_frame("classification", rows=30, seed=5)
    out, predictions = explained(model, frame)
    assert out["explain_class"].tolist() == [str(p) for p in predictions]
    sums = out["explain_base_value"] + out[[f"contribution:{c}" for c in INPUTS]].sum(axis=1)
    np.testing.assert_allclose(out["explain_output"], sums, rtol=1e-12)


def test_binary_log_odds_explain_the_positive_class_whatever_the_prediction(store: Path) -> None:
    model = loaded(store, "b")
    frame = frames.imbalanced_dataset(300, seed=9).drop(columns="y")
    out, predictions = explained(model, frame, rows=50)

    assert {str(p) for p in predictions} == {"a", "b"}  # some rows predicted negative, some positive
    assert set(out["explain_class"]) == {"b"}  # the positive class, on every row
    log_odds = model.estimator.decision_function(frame)
    np.testing.assert_allclose(out["explain_output"], log_odds, rtol=1e-6, atol=1e-9)


# --- predict_file ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real SQLite MLflow store with a toy regression forest registered as "toy-explain" version 1."""
    root = tmp_path_factory.mktemp("explain-registry")
    with sqlite_store(root, "explain") as experiment:
        register_toy_model("toy-explain", experiment)
        yield root


def config(root: Path, **batch: Any) -> BatchPredictionConfig:
    return BatchPredictionConfig(REGRESSION, DataSourceConfig(uri="unused.csv"), BatchConfig(**batch),
                                 MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                              registered_model_name="toy-explain"),
                                 root / "models", signing_config())


def test_predict_file_explains_every_good_row_and_flags_the_bad(registry: Path, tmp_path: Path) -> None:
    frame = toy_frame("regression", rows=30, seed=6)
    frame.loc[4, "x2"] = 99.0  # out of range: flagged, no prediction, no explanation
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = predict_file(config(registry, chunk_rows=8, on_bad_rows="flag"), str(tmp_path / "in.csv"),
                          str(tmp_path / "out.parquet"), "1", explain=True)
    out = pd.read_parquet(tmp_path / "out.parquet")

    contributions = [f"contribution:{c}" for c in INPUTS]
    assert list(out.columns) == result.columns == ["id", "prediction", "model_name", "model_version", *contributions,
                                                   "explain_base_value", "explain_output", "rejected"]
    assert result.explained is not None and result.explained["output"] == "value"
    assert "explained" in result.summary() and result.xcom()["explained"] == result.explained
    bad, good = out[out["rejected"]], out[~out["rejected"]]
    assert bad["id"].tolist() == [4] and bad[[*contributions, "explain_output"]].isna().all().all()
    np.testing.assert_allclose(good["explain_output"], good["prediction"], rtol=1e-6)  # ONNX agrees to 1e-9
    np.testing.assert_allclose(good["explain_output"], good["explain_base_value"] + good[contributions].sum(axis=1),
                               rtol=1e-12)
    served = loaded(registry / "models", "1")  # the bundle predict_file exported
    expected, _ = explained(served, frame.drop(index=4))
    np.testing.assert_allclose(good[contributions].to_numpy(), expected[contributions].to_numpy(), rtol=1e-12)


def test_without_explain_no_explanation_columns(registry: Path, tmp_path: Path) -> None:
    toy_frame("regression", rows=5).to_csv(tmp_path / "in.csv", index=False)
    result = predict_file(config(registry), str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "1")
    assert result.explained is None and "explained" not in result.summary()
    assert list(pd.read_csv(tmp_path / "out.csv").columns) == ["id", "prediction", "model_name", "model_version"]


def test_a_key_named_like_an_explanation_column_is_refused(registry: Path, tmp_path: Path) -> None:
    frame = toy_frame("regression", rows=5).assign(explain_output=range(5))
    frame.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(BatchPredictionError, match="'explain_output' has the name of a column"):
        predict_file(config(registry, id_column="explain_output"), str(tmp_path / "in.csv"),
                     str(tmp_path / "out.csv"), "1", explain=True)
    assert not (tmp_path / "out.csv").exists()


def test_cli_explain_flag_reaches_run_predict(config_dir: Path, isolated_env: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import main
    from include import batch_runs

    calls: list[dict[str, Any]] = []

    def run_predict(cm: Any, input_uri: str, output_uri: str, version: str, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return type("Result", (), {"summary": lambda self: "scored"})()

    monkeypatch.setattr(batch_runs, "run_predict", run_predict)
    common = ["predict", "--config-dir", str(config_dir), "--input", "in.csv", "--output", str(tmp_path / "o.csv")]
    assert main.main([*common, "--explain"]) == 0 and main.main(common) == 0
    assert [c["explain"] for c in calls] == [True, False]
