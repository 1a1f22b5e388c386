"""The ONNX Runtime engine: each model family served by it with sklearn's answers, or sklearn serving and why."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving import engine
from serving.inputs import validate
from serving.model import load_bundle
from tests.support.bundles import GOOD_ROW, make_bundle, toy_frame
from tests.support.engines import fitted, records, sklearn_predict
from tests.support.frames import FAST
from tests.support.signing import trusted_keys

FAMILIES = ("random_forest", "hist_gradient_boosting", "elasticnet")
TASKS = ("regression", "classification")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_served_by_onnx_runtime_with_sklearn_answers(family: str, task: str) -> None:
    pipeline, contract = fitted(family, task)
    reference = sklearn_predict(pipeline, task)
    predictor, chosen = engine.compile_predictor(pipeline, contract, records(task, 5, seed=1), reference)
    assert chosen == engine.Engine(engine.ONNX), chosen.reason
    # Rows never seen by the check, with missing numbers and categories: the same answers.
    rows = records(task, 300, seed=2)
    columns = validate(rows, contract, max_rows=len(rows)).columns
    assert np.isnan(columns["x1"]).any() and any(v is None for v in columns["kind"])
    got, got_proba = predictor.predict(columns)
    expected, expected_proba = reference(columns)
    if task == "regression":
        np.testing.assert_allclose(got, expected, rtol=engine.REGRESSION_RTOL, atol=engine.REGRESSION_RTOL)
    else:
        assert got.tolist() == expected.tolist()
        np.testing.assert_allclose(got_proba, expected_proba, rtol=0, atol=engine.PROBABILITY_ATOL)
    # The numeric features enter as one [n, k] tensor: given as validation's array, the same answers.
    assert [i.name for i in predictor.session.get_inputs()] == [engine.NUMERIC_INPUT, "kind"]
    plain = validate([{**row, "x1": 1.5 if row["x1"] is None else row["x1"]} for row in rows], contract,
                     max_rows=len(rows))
    assert plain.numeric.shape == (300, 3)
    assert predictor.predict(plain.columns, plain.numeric)[0].tolist() == predictor.predict(plain.columns)[0].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_binary_classifiers_are_served_by_onnx_runtime(family: str) -> None:
    pipeline, contract = fitted(family, "classification", binary=True)
    reference = sklearn_predict(pipeline, "classification")
    predictor, chosen = engine.compile_predictor(pipeline, contract, records("classification", 50, seed=4), reference)
    assert chosen.name == engine.ONNX, chosen.reason
    assert predictor.predict(validate(records("classification", 3, seed=6), contract, max_rows=3).columns)[1].shape \
        == (3, 2)


def test_forest_trees_sum_in_double_as_sklearn_does() -> None:
    """skl2onnx's own float32 trees are ~1e-6 off for a forest this size; ours must be within 1e-9."""
    pipeline, contract = fitted("random_forest", "regression", {"n_estimators": 100})
    rows = records("regression", 200, seed=3)
    columns = validate(rows, contract, max_rows=len(rows)).columns
    predictor, chosen = engine.compile_predictor(pipeline, contract, rows[:3], sklearn_predict(pipeline, "regression"))
    assert chosen.name == engine.ONNX, chosen.reason
    expected = sklearn_predict(pipeline, "regression")(columns)[0]
    assert np.max(np.abs(predictor.predict(columns)[0] - expected) / np.abs(expected)) < 1e-12


def test_edge_rows_cover_each_range_category_and_missing_value() -> None:
    _, contract = fitted("elasticnet", "regression")
    rows = engine.edge_rows(contract, records("regression", 1, seed=0))
    for feature in contract.features:
        values = {row[feature.name] for row in rows}
        if feature.is_numeric:
            assert {feature.min, feature.max, (feature.min + feature.max) / 2} <= values
        else:
            assert set(feature.allowed) <= values
        assert (None in values) == feature.nullable
    validate(rows, contract, max_rows=len(rows))  # every generated row is a valid request


@pytest.mark.parametrize("task", TASKS)
def test_a_disagreement_falls_back_to_sklearn_with_the_reason(task: str) -> None:
    pipeline, contract = fitted("random_forest", task)
    reference = sklearn_predict(pipeline, task)

    def off_by_a_little(columns):
        values, proba = reference(columns)
        if task == "regression":
            return values * (1 + 1e-7), None  # above 1e-9 relative
        return values, proba + 1e-5  # above 1e-6 absolute

    predictor, chosen = engine.compile_predictor(pipeline, contract, records(task, 5, seed=1), off_by_a_little)
    assert predictor is None and chosen.name == engine.SKLEARN
    assert chosen.reason.startswith("DisagreementError: ") and "differ" in chosen.reason


def test_a_different_label_falls_back() -> None:
    pipeline, contract = fitted("elasticnet", "classification")
    reference = sklearn_predict(pipeline, "classification")

    def one_label_wrong(columns):
        values, proba = reference(columns)
        values = values.copy()
        values[-1] = "a" if values[-1] != "a" else "b"
        return values, proba

    _, chosen = engine.compile_predictor(pipeline, contract, records("classification", 5, seed=1), one_label_wrong)
    assert chosen.name == engine.SKLEARN and "labels differ" in chosen.reason


def test_a_model_that_cannot_be_converted_falls_back() -> None:
    # HistGradientBoosting with a Poisson loss predicts exp(raw): not a converter we have.
    pipeline, contract = fitted("hist_gradient_boosting", "regression", {"loss": "poisson"}, offset=100.0)
    reference = sklearn_predict(pipeline, "regression")
    _, chosen = engine.compile_predictor(pipeline, contract, records("regression", 3, seed=1), reference)
    assert chosen.name == engine.SKLEARN and "NotImplementedError" in chosen.reason and "poisson" in chosen.reason


def test_loaded_bundle_serves_with_onnx_runtime_and_keeps_the_estimator(bundles: Path) -> None:
    model = load_bundle(bundles / "c1", trusted_keys())
    assert model.engine.name == engine.ONNX and model.compiled is not None
    final = model.estimator.steps[-1][1]
    assert "predict" not in vars(final) and "predict_proba" not in vars(final)  # nothing patched on sklearn's objects
    columns = validate([GOOD_ROW], model.contract, max_rows=1).columns
    served = model.predict(columns)
    assert served.values == model.sklearn_predict(columns)[0].tolist()
    assert set(served.probabilities[0]) == {"a", "b", "c"}
    assert model.describe()["engine"] == "onnxruntime" and model.describe()["engine_fallback_reason"] is None


def test_version_and_metrics_show_the_fallback(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(estimator, contract):
        raise NotImplementedError("no converter for this test")

    monkeypatch.setattr(engine, "convert", refuse)
    client = make_app().test_client()
    info = client.get("/version").json
    assert info["engine"] == "sklearn" and "no converter for this test" in info["engine_fallback_reason"]
    assert client.post("/predict", json=GOOD_ROW).status_code == 200  # sklearn answers
    text = client.get("/metrics").data.decode()
    assert 'serving_engine{engine="sklearn",reason="NotImplementedError: no converter for this test",version="1"} 1.0' \
        in text


def test_plain_numbers_are_checked_at_once_and_anything_else_column_by_column() -> None:
    from serving import inputs

    _, contract = fitted("elasticnet", "regression")
    plain = records("regression", 20, seed=5)
    for row in plain:
        row["x1"] = row["x1"] if row["x1"] is not None else 1.5
    given = inputs._record_columns(plain, contract, 100).values
    at_once = inputs._plain_numbers(contract, given)
    assert contract.numeric_bounds[0] == ("x1", "x 2", "count") and at_once.shape == (3, 20)
    for name, column in zip(contract.numeric_bounds[0], at_once):
        assert column.tolist() == [float(v) for v in given[name]]
    batch = validate(plain, contract, max_rows=100)  # one [n, k] array for the engine, columns as its views
    assert batch.numeric.tolist() == [[row[n] for n in ("x1", "x 2", "count")] for row in plain]
    for odd in ({"x1": None}, {"x1": True}, {"count": 2.5}, {"x 2": 11.0}, {"count": 10**400}, {"x1": math.nan},
                {"x1": math.inf}):
        rows = [dict(plain[0]), {**plain[1], **odd}]
        assert inputs._plain_numbers(contract, inputs._record_columns(rows, contract, 100).values) is None
    with pytest.raises(inputs.InputError, match="expected an integer"):  # the precise error, from the column path
        validate([{**plain[0], "count": 2.5}], contract, max_rows=1)


@pytest.mark.parametrize("family", ("random_forest", "extra_trees", "hist_gradient_boosting", "elasticnet"))
def test_a_sigmoid_calibrated_bundle_is_served_by_onnx_runtime_with_sklearns_probabilities(family: str,
                                                                                          tmp_path: Path) -> None:
    from sklearn.calibration import CalibratedClassifierCV

    # Through the real loader: signature, skops allow-list (the calibration's own types), conversion, self-check.
    bundle = make_bundle(tmp_path, "1", "classification", family=family,
                         hyperparameters={"random_state": 0, **FAST[family]}, calibration="sigmoid")
    model = load_bundle(bundle, trusted_keys())
    assert isinstance(model.estimator.named_steps["model"], CalibratedClassifierCV)
    assert model.engine == engine.Engine(engine.ONNX), model.engine.reason
    rows = records_of_the_bundle(300)
    batch = validate(rows, model.contract, max_rows=len(rows))
    served = model.predict(batch.columns, batch.numeric)
    values, probabilities = model.sklearn_predict(batch.columns)
    assert served.values == values.tolist()
    np.testing.assert_allclose([list(p.values()) for p in served.probabilities], probabilities, rtol=0,
                               atol=engine.PROBABILITY_ATOL)
    # The calibrated probabilities are not the estimator's own (the calibration is in the served graph).
    fitted_alone = model.estimator.named_steps["model"].calibrated_classifiers_[0].estimator
    own = fitted_alone.predict_proba(model.estimator.named_steps["preprocess"].transform(pd.DataFrame(batch.columns)))
    assert np.abs(own - probabilities).max() > 0.01


def test_an_isotonic_calibrated_bundle_is_served_by_sklearn_and_says_why(tmp_path: Path) -> None:
    model = load_bundle(make_bundle(tmp_path, "1", "classification", calibration="isotonic"), trusted_keys())
    assert model.engine.name == engine.SKLEARN and model.compiled is None
    assert model.engine.reason == ("NotImplementedError: isotonic calibration is not converted: skl2onnx maps a score "
                                   "to the nearest of the calibrator's thresholds, where scikit-learn interpolates "
                                   "between them")
    assert model.describe()["engine_fallback_reason"] == model.engine.reason
    rows = records_of_the_bundle(50)
    served = model.predict(validate(rows, model.contract, max_rows=len(rows)).columns)
    assert all(abs(sum(p.values()) - 1) < 1e-9 for p in served.probabilities)
    # The fitted forest inside the calibration predicts on one thread, as every served estimator does.
    inner = model.estimator.named_steps["model"].calibrated_classifiers_[0].estimator
    assert inner.n_jobs == 1


def records_of_the_bundle(rows: int) -> list[dict]:
    """Request rows for tests.support.bundles' toy schema (no missing category there)."""
    frame = toy_frame("classification", rows=rows, seed=11).drop(columns="y")
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]
