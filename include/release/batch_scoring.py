"""Batch prediction's scoring (include/release/batch.py): the columns the prediction server builds from a request,
the predictor's answers in calls of bounded rows, and the output columns they make."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from include.ml.exceptions import BatchPredictionError
from include.release import batch_explain
from serving.contract import Contract
from serving.model import LoadedModel

FLAG_COLUMN = "rejected"  # flag: true on a bad row, which has no prediction


def model_columns(contract: Contract, features: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns the server builds from a request: float64 for numeric features, Python objects (None when
    missing) for the others; a datetime stays the text the file holds."""
    columns = {}
    for feature in contract.features:
        if feature.name not in features:
            raise BatchPredictionError(f"the model needs column {feature.name!r}, which schema.yaml does not list as "
                                       "a feature: the model was trained on another schema")
        values = features[feature.name]
        columns[feature.name] = values.to_numpy(np.float64, na_value=np.nan) if feature.is_numeric \
            else values.astype(object).where(values.notna(), None).to_numpy()
    return columns


def predict_values(model: LoadedModel, columns: dict[str, np.ndarray], rows: int,
             batch_rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's answers (and class probabilities, if it gives them), `batch_rows` rows per call to the predictor
    the server uses (ONNX Runtime when the bundle compiled, else the estimator). One thread, as in a server's worker
    (the loader sets n_jobs=1; ONNX Runtime runs on one): hist_gradient_boosting's OpenMP threads would otherwise
    take every core, and on a busy machine their spin-waiting cost 2.5x the CPU (1M flights-like rows: 18.4 vs 13.0
    CPU seconds, 55 vs 40 s wall)."""
    from threadpoolctl import threadpool_limits

    predict = model.compiled.predict if model.compiled else model.sklearn_predict
    values, probabilities = [], []
    with threadpool_limits(1, user_api="openmp"):
        for start in range(0, rows, batch_rows):
            part = {name: column[start:start + batch_rows] for name, column in columns.items()}
            answer, probability = predict(part)
            values.append(np.asarray(answer).reshape(-1))
            if probability is not None:
                probabilities.append(np.asarray(probability, dtype=np.float64))
    if not values:
        return np.empty(0), None
    return np.concatenate(values), np.concatenate(probabilities) if probabilities else None


def model_classes(model: LoadedModel) -> list[str]:
    return [str(c) for c in getattr(model.estimator, "classes_", [])]


def gives_probabilities(model: LoadedModel) -> bool:
    """Whether the predictor answers class probabilities (as LoadedModel.sklearn_predict and the compiled
    predictor do for a classifier with predict_proba)."""
    return model.contract.task == "classification" and hasattr(model.estimator, "predict_proba")


def labels(model: LoadedModel, values: np.ndarray) -> Any:
    """The predictions as a column of one type whatever the chunk: float for a regression, the classes' own type
    (nullable, so a flagged row can be empty) for a classification."""
    if model.contract.task != "classification":
        return np.asarray(values, dtype=np.float64)
    classes = np.asarray(getattr(model.estimator, "classes_", np.empty(0, dtype=object)))
    kind = classes.dtype.kind
    if kind in "iub":
        return pd.array(np.asarray(values).astype(classes.dtype), dtype="boolean" if kind == "b" else "Int64")
    if kind == "f":
        return np.asarray(values, dtype=np.float64)
    return pd.array([str(v) for v in values], dtype=pd.StringDtype())


def flagged(scored: pd.DataFrame, keys: pd.DataFrame, good: pd.Index, model: LoadedModel) -> pd.DataFrame:
    """flag: every row of the chunk in input order, the good ones scored, the bad ones with their key, no prediction
    and rejected true."""
    out = scored.set_index(good).reindex(keys.index)
    for name in keys.columns:
        out[name] = keys[name]
    out["model_name"], out["model_version"] = model.name, model.version
    out[FLAG_COLUMN] = ~keys.index.isin(good)
    return out.reset_index(drop=True)


def output_columns(model: LoadedModel, keys: tuple[str, ...], mode: str,
             explainer: batch_explain.BatchExplainer | None = None) -> list[str]:
    classes = [f"probability_{c}" for c in model_classes(model)] if gives_probabilities(model) else []
    explained = explainer.columns() if explainer else []
    return [*keys, "prediction", *classes, "model_name", "model_version", *explained,
            *([FLAG_COLUMN] if mode == "flag" else [])]
