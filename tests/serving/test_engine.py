"""The ONNX Runtime engine: each model family converted at export (include/release/onnx) and served by it with
sklearn's answers, or sklearn serving and why."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.release.onnx import conversion
from serving import engine, store
from serving.inputs import validate
from serving.model import NO_ONNX_MODEL, load_bundle
from tests.support import typed
from tests.support.bundles import GOOD_ROW, make_bundle, resign, toy_frame
from tests.support.engines import assert_same_answers, fitted, records, sklearn_predict
from tests.support.frames import FAST, pipeline_for
from tests.support.pointers import point
from tests.support.signing import trusted_keys

FAMILIES = ("random_forest", "hist_gradient_boosting", "elasticnet")
TASKS = ("regression", "classification")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_served_by_onnx_runtime_with_sklearn_answers(family: str, task: str) -> None:
    pipeline, contract = fitted(family, task)
    reference = sklearn_predict(pipeline, task)
    predictor, chosen = conversion.compile_predictor(pipeline, contract, records(task, 5, seed=1), reference)
    assert chosen == engine.Engine(engine.ONNX), chosen.reason
    # Rows never seen by the check, with missing numbers and categories: the same answers.
    rows = records(task, 300, seed=2)
    columns = validate(rows, contract, max_rows=len(rows)).columns
    assert np.isnan(columns["x1"]).any() and any(v is None for v in columns["kind"])
    got, got_proba = predictor.predict(columns)
    expected, expected_proba = reference(columns)
    assert_same_answers(task, (got, got_proba), (expected, expected_proba))
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
    predictor, chosen = conversion.compile_predictor(pipeline, contract, records("classification", 50, seed=4),
                                                     reference)
    assert chosen.name == engine.ONNX, chosen.reason
    assert predictor.predict(validate(records("classification", 3, seed=6), contract, max_rows=3).columns)[1].shape \
        == (3, 2)


def test_forest_trees_sum_in_double_as_sklearn_does() -> None:
    """skl2onnx's own float32 trees are ~1e-6 off for a forest this size; ours must be within 1e-9."""
    pipeline, contract = fitted("random_forest", "regression", {"n_estimators": 100})
    rows = records("regression", 200, seed=3)
    columns = validate(rows, contract, max_rows=len(rows)).columns
    predictor, chosen = conversion.compile_predictor(pipeline, contract, rows[:3],
                                                     sklearn_predict(pipeline, "regression"))
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

    predictor, chosen = conversion.compile_predictor(pipeline, contract, records(task, 5, seed=1), off_by_a_little)
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

    _, chosen = conversion.compile_predictor(pipeline, contract, records("classification", 5, seed=1), one_label_wrong)
    assert chosen.name == engine.SKLEARN and "labels differ" in chosen.reason


def test_a_model_that_cannot_be_converted_falls_back() -> None:
    # HistGradientBoosting with a Poisson loss predicts exp(raw): not a converter we have.
    pipeline, contract = fitted("hist_gradient_boosting", "regression", {"loss": "poisson"}, offset=100.0)
    reference = sklearn_predict(pipeline, "regression")
    _, chosen = conversion.compile_predictor(pipeline, contract, records("regression", 3, seed=1), reference)
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


def test_version_and_metrics_show_the_fallback(make_app, store: Path) -> None:
    """A signed model.onnx that answers otherwise than its model (here: the other version's, 100 apart): the server
    checks it against the estimator, refuses it and serves sklearn, and says why."""
    (store / "1" / "model.onnx").write_bytes((store / "2" / "model.onnx").read_bytes())
    resign(store / "1")
    point(store, "1")  # the pointer names the manifest it signs: a new one for the re-signed bundle
    client = make_app().test_client()
    info = client.get("/version").json
    assert info["engine"] == "sklearn" and info["engine_fallback_reason"].startswith("DisagreementError: ")
    assert "differ beyond 1e-09 relative" in info["engine_fallback_reason"]
    assert client.post("/predict", json=GOOD_ROW).status_code == 200  # sklearn answers
    assert client.post("/predict", json=GOOD_ROW).json == client.post("/predict", json=GOOD_ROW).json
    text = client.get("/metrics").data.decode()
    assert 'serving_engine{engine="sklearn",reason="DisagreementError: ' in text


def test_a_bundle_exported_before_conversion_is_served_by_sklearn_and_says_so(bundles: Path, tmp_path: Path) -> None:
    """A bundle without model.onnx (exported before conversion moved to export): served, by sklearn, with the
    reason; the server does not convert it."""
    import shutil

    bundle = shutil.copytree(bundles / "1", tmp_path / "1")
    (bundle / store.ONNX_MODEL).unlink()
    resign(bundle)
    model = load_bundle(bundle, trusted_keys())
    assert model.engine == engine.Engine(engine.SKLEARN, NO_ONNX_MODEL) and model.compiled is None
    assert model.describe()["engine_fallback_reason"] == ("bundle has no model.onnx (exported before conversion at "
                                                          "export; re-export to serve it with ONNX Runtime)")


def test_a_model_that_cannot_be_converted_gets_no_model_onnx_and_the_reason(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "p", offset=100.0, family="hist_gradient_boosting",
                         hyperparameters={"loss": "poisson", "max_iter": 20})
    assert not (bundle / store.ONNX_MODEL).exists()
    recorded = json.loads((bundle / store.METADATA).read_text())["onnx"]
    assert recorded["converted"] is False and "poisson" in recorded["reason"]
    model = load_bundle(bundle, trusted_keys())
    assert model.engine == engine.Engine(engine.SKLEARN, recorded["reason"])


def test_a_model_onnx_swapped_in_without_a_signature_is_refused(bundles: Path, tmp_path: Path) -> None:
    """model.onnx is covered by the manifest and its signature like every file: another one, unsigned, is refused."""
    import shutil

    from serving.model import ModelLoadError

    bundle = shutil.copytree(bundles / "1", tmp_path / "1")
    (bundle / store.ONNX_MODEL).write_bytes((bundles / "2" / store.ONNX_MODEL).read_bytes())
    with pytest.raises(ModelLoadError, match="checksum mismatch for model.onnx"):
        load_bundle(bundle, trusted_keys())


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


@pytest.mark.parametrize("cyclical", [False, True])
def test_datetime_parts_in_onnx_runtime_are_the_calendar_of_pandas(cyclical: bool) -> None:
    """The converted DatetimeFeatures on 20,000 random instants from 1901 to 2099 (leap days, centuries, before and
    after the epoch, every hour) and missing ones: the same year, month, day, weekday, hour (sine, cosine) as
    pandas gives scikit-learn."""
    import onnxruntime as ort
    import pandas as pd

    from include.ml.preprocessing import build_preprocessor
    from include.ml.schema_file import ColumnSpec, SchemaConfig
    from serving.contract import Contract

    rng = np.random.default_rng(0)
    seconds = rng.integers(pd.Timestamp("1901-01-01").value // 10**9, pd.Timestamp("2099-12-31").value // 10**9,
                           20_000)
    moments = pd.to_datetime(seconds, unit="s").to_numpy().astype("datetime64[ns]")
    moments[::97] = np.datetime64("NaT")
    schema = SchemaConfig(task="regression", target="y", columns=(
        ColumnSpec(name="at", dtype="datetime", nullable=True, cyclical=cyclical), ColumnSpec(name="y", dtype="float")))
    pre = build_preprocessor(schema, "hist_gradient_boosting").fit(pd.DataFrame({"at": moments[:100]}))
    contract = Contract.from_mlmodel({"metadata": {"feature_contract": schema.feature_contract()}})
    session = ort.InferenceSession(conversion.convert(pre, contract), providers=["CPUExecutionProvider"])
    fed = np.where(np.isnat(moments), np.nan, moments.astype(np.int64) / 1e9).reshape(-1, 1)
    (got,) = session.run(None, {session.get_inputs()[0].name: fed})
    expected = pre.transform(pd.DataFrame({"at": moments}))
    assert got.shape == expected.shape == (20_000, 11 if cyclical else 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)  # NaN where missing, on both sides


# --- every column type: datetimes, ordinals, open and native categories, one-hot with an infrequent bucket --------

@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", (*FAMILIES, "extra_trees"))
def test_every_column_type_is_served_by_onnx_runtime_with_sklearn_answers(family: str, task: str) -> None:
    """The table of tests/support/typed.py through each family's pipeline (hist_gradient_boosting: native categorical
    splits and target encoding; the others: one-hot with an infrequent bucket, target encoding, imputed datetime
    parts), against sklearn on rows it never saw: numbers for an open category, unseen and missing values too."""
    pipeline, _ = typed.fitted(task, family)
    contract = typed.contract(task)
    reference = sklearn_predict(pipeline, task)
    predictor, chosen = conversion.compile_predictor(pipeline, contract, typed.as_records(typed.requests(task, 5, 1)),
                                                 reference)
    assert chosen == engine.Engine(engine.ONNX), chosen.reason
    # The same model converts to the same bytes: a version exported again is the bundle its servers already hold.
    assert conversion.convert(pipeline, contract) == conversion.convert(pipeline, contract)
    frame = typed.requests(task, 300, seed=2)
    rows = typed.as_records(frame)
    odd = [{"dest": 7}, {"dest": "never seen"}, {"tailnum": 12.5}, {"carrier": None, "sched": None},
           {"time_hour": "2013-12-31T23:00:00+00:00", "cut": "Fair"}]
    rows += [{**rows[i], **change} for i, change in enumerate(odd)]
    columns = validate(rows, contract, max_rows=len(rows)).columns
    got, got_proba = predictor.predict(columns)
    expected, expected_proba = reference(columns)
    assert_same_answers(task, (got, got_proba), (expected, expected_proba))
    # What the server gives the model (datetimes parsed, keys and ignored columns dropped) is what batch scoring
    # gives it (the CSV's text): the same answers.
    batch = pipeline.predict(frame[list(typed.FEATURES)])
    served = got[:len(frame)]
    if task == "regression":
        np.testing.assert_allclose(served, batch, rtol=engine.REGRESSION_RTOL, atol=engine.REGRESSION_RTOL)
    else:
        assert served.tolist() == batch.tolist()


def test_datetime_parts_in_the_graph_are_the_transformers_own() -> None:
    """Year, month, day, day of week and hour (and the cyclical sine and cosine) from seconds since 1970, across the
    whole datetime64[ns] range, before 1970 too, with missing values: equal to DatetimeFeatures', bit for bit."""
    import onnxruntime as ort
    import pandas as pd
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.compose import ColumnTransformer

    from serving.features import DatetimeFeatures

    rng = np.random.default_rng(0)
    seconds = rng.integers(-9_000_000_000, 9_000_000_000, 5000)
    moments = np.r_[seconds, [0, -1, 951782400, 951868799, 4107542400]].astype("datetime64[s]").astype(
        "datetime64[ns]")  # 1970, its last second before, 29 February 2000, 2100-03-01
    moments[::97] = np.datetime64("NaT")
    frame = pd.DataFrame({"t": moments, "u": moments[::-1]})
    for cyclical in (False, True):
        transformer = ColumnTransformer([("dt", DatetimeFeatures(cyclical=cyclical), ["t", "u"])]).fit(frame)
        onx = conversion.to_onnx(transformer, [("t", DoubleTensorType([None, 1])), ("u", DoubleTensorType([None, 1]))])
        session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {"t": engine.epoch_seconds(moments).reshape(-1, 1),
                                 "u": engine.epoch_seconds(moments[::-1]).reshape(-1, 1)})[0]
        expected = transformer.transform(frame)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected, equal_nan=True), np.argwhere(~np.isclose(got, expected, equal_nan=True))


def test_an_open_category_of_numbers_falls_back_to_sklearn_naming_the_column() -> None:
    """The graph takes categories as text; a column whose categories are numbers (what pandas reads from a column of
    codes) is served by sklearn, and /version says why."""
    frame = typed.frame("regression")
    frame["dest"] = frame["dest"].str[1:].astype(float)  # D07 -> 7.0, missing stays NaN
    pipeline = pipeline_for(typed.schema("regression"), "random_forest", {"n_estimators": 5})
    pipeline.fit(frame[list(typed.FEATURES)], frame["arr_delay"])
    contract = typed.contract("regression")
    _, chosen = conversion.compile_predictor(pipeline, contract, typed.as_records(typed.requests("regression", 3, 1)),
                                         sklearn_predict(pipeline, "regression"))
    assert chosen.name == engine.SKLEARN
    assert chosen.reason == ("NotImplementedError: TargetEncoder column 'dest' has non-text categories "
                             "[0.0, 1.0, 2.0, 3.0, 4.0]")


def test_a_step_without_a_converter_is_named_in_the_reason() -> None:
    from sklearn.preprocessing import FunctionTransformer

    pipeline, contract = fitted("elasticnet", "regression")
    pipeline.steps.insert(1, ("log", FunctionTransformer(np.log1p)))
    _, chosen = conversion.compile_predictor(pipeline, contract, records("regression", 3, seed=1),
                                         sklearn_predict(pipeline, "regression"))
    assert chosen.name == engine.SKLEARN and "FunctionTransformer" in chosen.reason and len(chosen.reason) < 200


def test_the_compiled_model_takes_datetimes_as_text_too() -> None:
    """Batch scoring hands the predictor a file's values (datetimes as text, unix seconds as numbers); the server
    hands it validation's datetime64: the same answers."""
    pipeline, _ = typed.fitted("regression", "hist_gradient_boosting")
    contract = typed.contract("regression")
    predictor, chosen = conversion.compile_predictor(pipeline, contract, [], sklearn_predict(pipeline, "regression"))
    assert chosen.name == engine.ONNX, chosen.reason
    frame = typed.requests("regression", 50, seed=3)
    validated = validate(typed.as_records(frame), contract, max_rows=50).columns
    as_read = {**validated, "time_hour": frame["time_hour"].to_numpy(dtype=object),
               "sched": frame["sched"].to_numpy()}
    assert predictor.predict(as_read)[0].tolist() == predictor.predict(validated)[0].tolist()


@pytest.mark.parametrize("method", ("sigmoid", "isotonic"))
@pytest.mark.parametrize("family", ("random_forest", "extra_trees", "hist_gradient_boosting", "elasticnet"))
def test_a_calibrated_bundle_is_served_by_onnx_runtime_with_sklearns_probabilities(family: str, method: str,
                                                                                   tmp_path: Path) -> None:
    from sklearn.calibration import CalibratedClassifierCV

    # Through the real loader: signature, skops allow-list (the calibration's own types), conversion, self-check.
    bundle = make_bundle(tmp_path, "1", "classification", family=family,
                         hyperparameters={"random_state": 0, **FAST[family]}, calibration=method)
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
    # The fitted classifier inside the calibration predicts on one thread, as every served estimator does.
    if "n_jobs" in fitted_alone.get_params():
        assert fitted_alone.n_jobs == 1


@pytest.mark.parametrize("binary", (False, True))
def test_isotonic_calibration_interpolates_between_thresholds_as_scikit_learn_does(binary: bool) -> None:
    """skl2onnx's own converter takes the nearest threshold's value (on this test's three-class model, before its
    calibrators are replaced, its probabilities were 0.086 off). Ours interpolates, and where every class
    calibrates to 0 gives each the same share, as scikit-learn does."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.isotonic import IsotonicRegression

    pipeline, contract = fitted("elasticnet", "classification", binary=binary)
    frame = toy_frame("classification").rename(columns={"x2": "x 2"})
    y = frame["y"].where(frame["y"] != "c", "b") if binary else frame["y"]
    calibrated = CalibratedClassifierCV(pipeline.named_steps["model"], method="isotonic", cv=5, ensemble=False)
    pipeline.steps[-1] = ("model", calibrated)
    pipeline.fit(frame.drop(columns="y"), y)
    if not binary:  # calibrators that say 0 below each class's 90th percentile score: rows where every class is 0
        inner = calibrated.calibrated_classifiers_[0]
        features = pipeline.named_steps["preprocess"].transform(frame.drop(columns="y"))
        scores = inner.estimator.decision_function(features)
        inner.calibrators = [IsotonicRegression(out_of_bounds="clip").fit(s, s > np.quantile(s, 0.9))
                             for s in scores.T]
    reference = sklearn_predict(pipeline, "classification")
    predictor, chosen = conversion.compile_predictor(pipeline, contract, records("classification", 5, seed=1),
                                                     reference)
    assert chosen == engine.Engine(engine.ONNX), chosen.reason
    columns = validate(rows := records("classification", 2000, seed=9), contract, max_rows=len(rows)).columns
    got, got_proba = predictor.predict(columns)
    expected, expected_proba = reference(columns)
    assert got.tolist() == expected.tolist()
    np.testing.assert_allclose(got_proba, expected_proba, rtol=0, atol=1e-12)
    if not binary:
        uniform = np.all(np.isclose(expected_proba, 1 / 3), axis=1)
        assert uniform.any() and np.allclose(got_proba[uniform], 1 / 3)


def test_a_calibration_per_fold_falls_back_and_says_so() -> None:
    from sklearn.calibration import CalibratedClassifierCV

    pipeline, contract = fitted("elasticnet", "classification")
    frame = toy_frame("classification").rename(columns={"x2": "x 2"})
    pipeline.steps[-1] = ("model", CalibratedClassifierCV(pipeline.named_steps["model"], cv=3, ensemble=True))
    pipeline.fit(frame.drop(columns="y"), frame["y"])
    _, chosen = conversion.compile_predictor(pipeline, contract, records("classification", 5, seed=1),
                                         sklearn_predict(pipeline, "classification"))
    assert chosen.name == engine.SKLEARN
    assert chosen.reason == ("NotImplementedError: CalibratedClassifierCV(method='sigmoid') with 3 calibrated "
                             "classifiers (ensemble=True)")


def records_of_the_bundle(rows: int) -> list[dict]:
    """Request rows for tests.support.bundles' toy schema (no missing category there)."""
    frame = toy_frame("classification", rows=rows, seed=11).drop(columns="y")
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


@pytest.mark.parametrize("method", ("sigmoid", "isotonic"))
@pytest.mark.parametrize("family", ("random_forest", "hist_gradient_boosting"))
def test_a_calibrated_classifier_of_every_column_type_is_served_by_onnx_runtime(family: str, method: str) -> None:
    """Training's calibration (model.calibration) around a forest (its probabilities calibrated) and histogram
    gradient boosting with native categorical splits (its decision function calibrated), on every column type."""
    data = typed.frame("classification")
    pipeline = pipeline_for(typed.schema("classification"), family,
                            {"max_iter": 20} if family == "hist_gradient_boosting" else {"n_estimators": 10},
                            calibration=method)
    pipeline.fit(data[list(typed.FEATURES)], data["late"])
    reference = sklearn_predict(pipeline, "classification")
    contract = typed.contract("classification")
    predictor, chosen = conversion.compile_predictor(pipeline, contract,
                                                 typed.as_records(typed.requests("classification", 5, 1)), reference)
    assert chosen == engine.Engine(engine.ONNX), chosen.reason
    columns = validate(rows := typed.as_records(typed.requests("classification", 300, seed=2)), contract,
                       max_rows=len(rows)).columns
    got, got_proba = predictor.predict(columns)
    expected, expected_proba = reference(columns)
    assert got.tolist() == expected.tolist()
    np.testing.assert_allclose(got_proba, expected_proba, rtol=0, atol=engine.PROBABILITY_ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_several_columns_of_each_encoding_are_served_by_onnx_runtime(family: str) -> None:
    """Two columns each of native, ordinal, target-encoded, one-hot and datetime features: every encoder reads one
    column (joining text columns for one encoder takes a FeatureVectorizer, which refuses text)."""
    import pandas as pd

    from include.ml.schema_file import SchemaConfig
    from serving.contract import Contract
    from tests.support.frames import pipeline_for

    rng = np.random.default_rng(0)
    n = 500
    frame = pd.DataFrame({
        "a": rng.choice(list("xyz"), n), "b": rng.choice(list("pq"), n), "o1": rng.choice(["lo", "hi"], n),
        "o2": rng.choice(["lo", "hi"], n), "t1": rng.choice([f"v{i}" for i in range(50)], n),
        "t2": rng.choice([f"w{i}" for i in range(50)], n), "h1": rng.choice(["r", "s"], n),
        "h2": rng.choice(["u", "v"], n), "d1": pd.date_range("2024-01-01", periods=n, freq="7h").astype(str),
        "d2": pd.date_range("2023-01-01", periods=n, freq="31h").astype(str), "x": rng.normal(size=n)})
    y = rng.normal(size=n) + (frame["a"] == "x") + (frame["o1"] == "hi") + pd.to_datetime(frame["d1"]).dt.hour / 12
    schema = SchemaConfig.model_validate({"task": "regression", "target": "y", "columns": {
        "a": {"dtype": "category", "allowed": list("xyz")}, "b": {"dtype": "category", "allowed": list("pq")},
        "o1": {"dtype": "ordinal", "categories": ["lo", "hi"]}, "o2": {"dtype": "ordinal", "categories": ["lo", "hi"]},
        "t1": {"dtype": "category", "encoding": "target"}, "t2": {"dtype": "category", "encoding": "target"},
        "h1": {"dtype": "category", "encoding": "onehot"}, "h2": {"dtype": "category", "encoding": "onehot"},
        "d1": {"dtype": "datetime"}, "d2": {"dtype": "datetime", "cyclical": True}, "x": {"dtype": "float"},
        "y": {"dtype": "float"}}})
    pipeline = pipeline_for(schema, family, {"n_estimators": 20} if family == "random_forest" else {})
    pipeline.fit(frame, y)
    contract = Contract.from_mlmodel({"metadata": {"feature_contract": schema.feature_contract()}})
    reference = sklearn_predict(pipeline, "regression")
    rows = frame.to_dict("records")
    predictor, chosen = conversion.compile_predictor(pipeline, contract, rows[:5], reference)
    assert chosen == engine.Engine(engine.ONNX), chosen.reason
    columns = validate(rows, contract, max_rows=n).columns
    np.testing.assert_allclose(predictor.predict(columns)[0], reference(columns)[0], rtol=engine.REGRESSION_RTOL,
                               atol=engine.REGRESSION_RTOL)
