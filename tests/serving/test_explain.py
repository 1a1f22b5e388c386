"""serving/explain.py on pipelines trained as the pipeline trains them: for every family x task, each row's
base value plus its contributions is the model's own output (1e-6 relative), and the contributions of one-hot,
date-derived, ordinal and encoded model inputs come back under the input column's name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from include.ml.schema_file import SchemaConfig
from serving.explain import LOG_ODDS, PROBABILITY, VALUE, ExplainError, build_explainer
from tests.support.frames import mixed_dataset, mixed_schema, pipeline_for

FAMILIES = ("elasticnet", "random_forest", "extra_trees", "hist_gradient_boosting")
SMALL = {"random_forest": {"n_estimators": 15}, "extra_trees": {"n_estimators": 15},
         "hist_gradient_boosting": {"max_iter": 30}, "elasticnet": {"alpha": 0.01}}
PLATES = tuple(f"P{i:03d}" for i in range(60))


def listed_plates(schema: SchemaConfig) -> SchemaConfig:
    """`plate` with its 60 values listed: histogram gradient boosting splits on it natively (a category bitset)."""
    columns = tuple(c.model_copy(update={"allowed": PLATES}) if c.name == "plate" else c for c in schema.columns)
    return schema.model_copy(update={"columns": columns})


def fitted(family: str, task: str, schema: SchemaConfig | None = None, binary: bool = False,
           calibration: str = "none") -> tuple[Any, SchemaConfig, Any]:
    schema = schema or mixed_schema(task)
    frame = mixed_dataset(task, rows=400)
    if binary:
        frame["y"] = frame["y"].where(frame["y"] != "c", "b")
    x = frame.drop(columns=["y"])
    hyperparameters = {} if family == "elasticnet" and task == "classification" else SMALL[family]
    pipeline = pipeline_for(schema, family, hyperparameters, calibration=calibration).fit(x, frame["y"])
    rows = mixed_dataset(task, rows=200, seed=1).drop(columns=["y"])
    return pipeline, schema, rows


def model_output(pipeline: Any, rows: Any, output: str, calibrated: bool) -> np.ndarray:
    """(rows, outputs): the output the explanation adds up to, computed by the estimator itself."""
    step = pipeline.named_steps["model"]
    model = step.calibrated_classifiers_[0].estimator if calibrated else step
    encoded = pipeline.named_steps["preprocess"].transform(rows)
    if output == VALUE:
        out = model.predict(encoded)
    elif output == PROBABILITY:
        out = model.predict_proba(encoded)
    else:
        out = model.decision_function(encoded)
    return np.asarray(out, dtype=np.float64).reshape(len(rows), -1)


def check_identity(pipeline: Any, schema: SchemaConfig, rows: Any) -> Any:
    inputs = [c.name for c in schema.features]
    explanations = build_explainer(pipeline, inputs).explain_frame(rows)
    assert explanations.contributions.shape[0] == len(rows) == 200
    assert explanations.inputs == tuple(inputs)
    expected = model_output(pipeline, rows, explanations.output, explanations.calibrated)
    assert expected.shape == explanations.values.shape
    np.testing.assert_allclose(explanations.values, expected, rtol=1e-6, atol=1e-9)
    return explanations


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_add_up_to_the_output_per_input_column(family: str, task: str) -> None:
    pipeline, schema, rows = fitted(family, task)
    explanations = check_identity(pipeline, schema, rows)
    expected_output = VALUE if task == "regression" else PROBABILITY if "forest" in family or "trees" in family \
        else LOG_ODDS
    assert explanations.output == expected_output
    per_column = explanations.mean_abs()
    # the datetime's derived parts, the ordinal, the encoded category and the one-hot columns each come back
    # under their input column, and the signal's columns carry weight
    assert set(per_column) == {"when", "grade", "plate", "kind", "x1"}
    for column in ("when", "grade", "x1"):
        assert per_column[column] > 0, (column, per_column)
    if task == "classification":
        assert explanations.classes == ("a", "b", "c")
        row = explanations.rows()[0]
        assert set(row["base_value"]) == {"a", "b", "c"} and set(row["contributions"]["b"]) == set(per_column)
    else:
        row = explanations.rows()[0]
        assert row["base_value"] + sum(row["contributions"].values()) == pytest.approx(pipeline.predict(rows)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_binary_classifiers_add_up(family: str) -> None:
    pipeline, schema, rows = fitted(family, "classification", binary=True)
    explanations = check_identity(pipeline, schema, rows)
    # log-odds models have one output, the positive class's; probability models one per class
    assert explanations.classes == (("a", "b") if explanations.output == PROBABILITY else ("b",))
    base, contributions = explanations.for_class(pipeline.predict(rows))
    assert base.shape == (200,) and contributions.shape == (200, 5)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_native_category_splits_are_explained_exactly(task: str) -> None:
    """shap reads no category bitset: without the per-group thresholds the identity misses by whole units."""
    pipeline, schema, rows = fitted("hist_gradient_boosting", task, listed_plates(mixed_schema(task)))
    model = pipeline.named_steps["model"]
    assert model.is_categorical_ is not None and model.is_categorical_.sum() >= 2  # plate and kind, natively
    rows.loc[rows.index[::7], "plate"] = "P999"  # unknown to the model: the missing-value way
    explanations = check_identity(pipeline, schema, rows)
    assert explanations.mean_abs()["plate"] > 0


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_classifier_is_explained_before_calibration(method: str) -> None:
    pipeline, schema, rows = fitted("hist_gradient_boosting", "classification", calibration=method)
    explanations = check_identity(pipeline, schema, rows)
    assert explanations.calibrated and explanations.output == LOG_ODDS


def test_unknown_family_is_refused() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import Pipeline

    frame = mixed_dataset("regression", rows=50)
    pipeline = Pipeline([("preprocess", ColumnTransformer([("numeric", "passthrough", ["row_id"])])),
                         ("model", KNeighborsRegressor(n_neighbors=3))]).fit(frame[["row_id"]], frame["y"])
    with pytest.raises(ExplainError, match="no explainer for a KNeighborsRegressor"):
        build_explainer(pipeline, ["row_id"])
