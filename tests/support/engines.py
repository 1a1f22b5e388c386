"""Pipelines of every model family fitted in memory, with the contract a server would read, for engine tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from include.ml.schema_file import ColumnSpec, SchemaConfig
from serving.contract import Contract
from serving.engine import model_frame
from tests.support.bundles import toy_frame

# The toy features, with missing values in a number and in a category, and a name that is no identifier.
FEATURES = (
    ColumnSpec(name="x1", dtype="float", nullable=True, min=-10, max=10),
    ColumnSpec(name="x 2", dtype="float", min=-10, max=10),
    ColumnSpec(name="count", dtype="int", min=0, max=100),
    ColumnSpec(name="kind", dtype="category", nullable=True, allowed=("p", "q")),
)
TARGETS = {"regression": ColumnSpec(name="y", dtype="float"),
           "classification": ColumnSpec(name="y", dtype="category", allowed=("a", "b", "c"))}


def schema(task: str) -> SchemaConfig:
    return SchemaConfig(task=task, target="y", min_rows=1, columns=FEATURES + (TARGETS[task],))


def fitted(family: str, task: str, hyperparameters: dict[str, Any] | None = None,
           offset: float = 0.0, binary: bool = False) -> tuple[Any, Contract]:
    """A pipeline trained as the pipeline trains (preprocessor + family), on toy rows with NaN in x1 and kind
    (`offset` shifts a regression target; `binary`: two classes instead of three)."""
    from tests.support.frames import pipeline_for

    frame = toy_frame(task, offset=offset).rename(columns={"x2": "x 2"})
    frame["kind"] = frame["kind"].astype(object)
    frame.loc[::9, "kind"] = np.nan
    x, y = frame.drop(columns="y"), frame["y"]
    if binary:
        y = y.where(y != "c", "b")
    params = {"n_estimators": 20} if family == "random_forest" else {}
    pipeline = pipeline_for(schema(task), family, {**params, **(hyperparameters or {})})
    pipeline.fit(x, y)
    return pipeline, Contract.from_mlmodel({"metadata": {"feature_contract": schema(task).feature_contract()}})


def records(task: str, rows: int, seed: int) -> list[dict[str, Any]]:
    """Request rows (None where missing) from a toy frame other than the training one."""
    frame = toy_frame(task, rows=rows, seed=seed).drop(columns="y").rename(columns={"x2": "x 2"})
    frame["kind"] = frame["kind"].astype(object)
    frame.loc[::4, "kind"] = None
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def sklearn_predict(pipeline: Any, task: str):
    """What LoadedModel.sklearn_predict does, for a pipeline not in a bundle."""
    def predict(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        frame = model_frame(columns)
        return pipeline.predict(frame), pipeline.predict_proba(frame) if task == "classification" else None
    return predict


def assert_same_answers(task: str, got: tuple[Any, Any], expected: tuple[Any, Any]) -> None:
    """(values, probabilities) of the compiled predictor against sklearn's, within the engine's tolerances: regression
    values relative, labels exactly, probabilities absolute."""
    from serving import engine

    if task == "regression":
        np.testing.assert_allclose(got[0], expected[0], rtol=engine.REGRESSION_RTOL, atol=engine.REGRESSION_RTOL)
        return
    assert got[0].tolist() == expected[0].tolist()
    np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=engine.PROBABILITY_ATOL)
