"""The compiled predictor: a bundle's model.onnx as an ONNX Runtime session, served only if it answers as sklearn.

Export converts the pipeline to ONNX (include/release/onnx: skl2onnx with converters of our own, in double
precision) and signs the result into the bundle as model.onnx; this module never converts. The graph's inputs are
the ones sklearn receives: float64 numbers, text categories (a missing one as MISSING_CATEGORY, a number given for
an open category as NOT_TEXT), a datetime as seconds since 1970 in UTC; the numeric and datetime features arrive as
one [n, k] double tensor (NUMERIC_INPUT).

`load_predictor` builds the session from the bundle's bytes, then predicts the self-check rows and generated edge
rows (each numeric and datetime feature at its min, max and quantiles of its range, each category and ordinal
value, an open category's known values and one never seen, missing values where nullable) with both, and keeps the
session only if regression answers agree within 1e-9 relative (absolute below 1) and classifications have the same
labels and probabilities within 1e-6: export ran exactly this check before it wrote model.onnx. Otherwise sklearn
serves and `Engine.reason` says why. The estimator itself is never changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.contract import Contract

log = logging.getLogger(__name__)

ONNX = "onnxruntime"
SKLEARN = "sklearn"
MISSING_CATEGORY = "\x00missing"  # what a missing category becomes: validation never lets a NUL through
# What a number given for an open category becomes: the model's categories are all text (convert refuses others),
# so to sklearn a number is a value it never saw; this marker is one too.
NOT_TEXT = "\x00not text"
NUMERIC_INPUT = "numeric_features"  # not a valid skl2onnx name for a feature (they keep their spaces as "_")
REGRESSION_RTOL = 1e-9
PROBABILITY_ATOL = 1e-6
_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
_KNOWN_VALUES = 50  # an open category's values the edge rows try


@dataclass(frozen=True)
class Engine:
    """What serves a model, and why not ONNX Runtime when it does not."""

    name: str
    reason: str | None = None


class DisagreementError(Exception):
    """The compiled predictor answers differently from the sklearn pipeline on some checked row."""


def model_frame(columns: dict[str, np.ndarray]) -> Any:
    """Validated columns as the frame the sklearn pipeline is given: a missing category or ordinal (None to
    validation) as NaN, as pandas reads it from the training CSV, so every encoder treats it as in training
    (TargetEncoder, for one, takes None for a value it never saw but NaN for the missing category it learnt)."""
    import pandas as pd

    arrays = {name: np.asarray(values) for name, values in columns.items()}
    return pd.DataFrame({name: _nan_for_none(values) if values.dtype == object else values
                         for name, values in arrays.items()}, copy=False)


def _nan_for_none(values: np.ndarray) -> np.ndarray:
    missing = np.equal(values, None)
    if not missing.any():
        return values
    values = values.copy()
    values[missing] = np.nan
    return values


def double_input(feature: Any) -> bool:
    """A feature the graph takes as a double: a number, or a datetime as seconds since 1970 (UTC)."""
    return feature.is_numeric or feature.dtype == "datetime"


def epoch_seconds(moments: np.ndarray) -> np.ndarray:
    """datetime64 values as whole seconds since 1970-01-01 (floored, as the datetime's parts are), NaN for NaT."""
    ns = moments.astype("datetime64[ns]").view(np.int64)
    return np.where(np.isnat(moments), np.nan, np.floor_divide(ns, 1_000_000_000).astype(np.float64))


class OnnxPredictor:
    """An ONNX Runtime session with the pipeline's inputs: the numeric and datetime features as one [n, k] double
    tensor in contract order (NUMERIC_INPUT; a datetime as seconds since 1970), each text feature as an [n, 1]
    tensor of its own."""

    def __init__(self, model_bytes: bytes, contract: Contract, classes: list[Any] | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Parallelism comes from gunicorn workers and micro-batching; a thread pool per session only contends.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        # One RunOptions for every call (Run only reads it): without one, each call builds a default (~5 µs).
        self.run_options = ort.RunOptions()
        self.numeric = [f.name for f in contract.features if double_input(f)]
        self.datetimes = {f.name: f.format for f in contract.features if f.dtype == "datetime"}
        # skl2onnx makes names valid identifiers ("fixed acidity" -> "fixed_acidity"); inputs keep their order.
        text_inputs = [i.name for i in self.session.get_inputs() if i.name != NUMERIC_INPUT]
        self.text = list(zip([f.name for f in contract.features if not double_input(f)], text_inputs))
        self.classes = classes
        self.outputs = [o.name for o in self.session.get_outputs()][:1 if classes is None else 2]

    def predict(self, columns: dict[str, np.ndarray],
                numeric: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`numeric`: the numeric columns as one [n, k] array, when the caller has them so (inputs.Batch). A datetime
        column is datetime64 (validation's) or the values a file holds (batch scoring's)."""
        feeds = {}
        if self.numeric:
            if numeric is None or self.datetimes:  # validation's array holds the numbers only
                numeric = np.column_stack([epoch_seconds(self._moments(name, columns[name])) if name in self.datetimes
                                           else np.asarray(columns[name], dtype=np.float64) for name in self.numeric])
            feeds[NUMERIC_INPUT] = np.ascontiguousarray(numeric, dtype=np.float64)
        for name, onnx_name in self.text:
            values = [v if type(v) is str else MISSING_CATEGORY if v is None or v != v else NOT_TEXT
                      for v in columns[name]]
            feeds[onnx_name] = np.array(values, dtype=object).reshape(-1, 1)
        out = self.session.run(self.outputs, feeds, self.run_options)
        if self.classes is None:
            return out[0].reshape(-1), None
        return out[0].reshape(-1), out[1]

    def _moments(self, name: str, values: np.ndarray) -> np.ndarray:
        """A datetime column as datetime64: validation's as it is, batch scoring's text (or unix numbers) parsed as
        everywhere else."""
        if values.dtype.kind == "M":
            return values
        from serving.features import parse_datetimes

        return parse_datetimes(values, self.datetimes[name])[0]


def load_predictor(model_bytes: bytes, estimator: Any, contract: Contract, check_rows: list[dict[str, Any]],
                   sklearn_predict: Any) -> tuple[OnnxPredictor | None, Engine]:
    """The ONNX Runtime predictor of `model_bytes` (a bundle's model.onnx) if it agrees with `sklearn_predict(columns)`
    -> (values, probabilities) on check_rows plus generated edge rows; else None and the reason."""
    try:
        predictor = OnnxPredictor(model_bytes, contract, classes(estimator, contract))
        check_agreement(predictor, estimator, contract, check_rows, sklearn_predict)
    except Exception as exc:  # noqa: BLE001 - whatever fails here, sklearn serves and the reason is shown
        return None, Engine(SKLEARN, reason(exc))
    return predictor, Engine(ONNX)


def check_agreement(predictor: OnnxPredictor, estimator: Any, contract: Contract, check_rows: list[dict[str, Any]],
                    sklearn_predict: Any) -> None:
    """Raise DisagreementError unless the predictor answers check_rows and the edge rows as sklearn does."""
    compare(predictor, sklearn_predict, contract, check_rows + edge_rows(contract, check_rows,
                                                                           known_categories(estimator)))


def sklearn_predictor(estimator: Any, contract: Contract) -> Any:
    """The estimator's own answers as a function of validated columns: values, and class probabilities for a
    classifier that has them (what LoadedModel.sklearn_predict serves)."""
    def predict(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        frame = model_frame(columns)
        probabilities = None
        if contract.task == "classification" and hasattr(estimator, "predict_proba"):
            probabilities = estimator.predict_proba(frame)
        return np.asarray(estimator.predict(frame)), probabilities
    return predict


def compare(predictor: OnnxPredictor, sklearn_predict: Any, contract: Contract, rows: list[dict[str, Any]]) -> None:
    """Raise DisagreementError unless the predictor answers `rows` as sklearn does (the tolerances above)."""
    from serving.inputs import validate

    batch = validate(rows, contract, max_rows=len(rows), out_of_range="flag")
    columns = batch.columns
    got, got_proba = predictor.predict(columns, batch.numeric)
    expected, expected_proba = sklearn_predict(columns)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        raise DisagreementError(f"{got.shape[0]} answers for {expected.shape[0]} rows")
    if contract.task == "regression":
        got = got.astype(np.float64)
        off = np.abs(got - expected) > REGRESSION_RTOL * np.maximum(np.abs(expected), 1.0)
        if off.any():
            i = int(off.argmax())
            raise DisagreementError(f"{int(off.sum())} of {len(rows)} rows differ beyond {REGRESSION_RTOL:g} "
                                    f"relative; row {i}: {got[i]!r} vs sklearn {expected[i]!r}")
        return
    labels = got.tolist() != expected.tolist()
    if labels:
        i = next(i for i, (a, b) in enumerate(zip(got.tolist(), expected.tolist())) if a != b)
        raise DisagreementError(f"labels differ; row {i}: {got[i]!r} vs sklearn {expected[i]!r}")
    if expected_proba is not None:
        gap = float(np.max(np.abs(np.asarray(got_proba, dtype=np.float64) - expected_proba)))
        if not gap <= PROBABILITY_ATOL:
            raise DisagreementError(f"probabilities differ by {gap:.3g} (> {PROBABILITY_ATOL:g})")


def edge_rows(contract: Contract, base_rows: list[dict[str, Any]],
              known: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """The first base row (or the contract's example) varied one feature at a time: each numeric and datetime
    feature at the quantiles of its range, each category and ordinal value, an open category's `known` values (what
    the model saw) and one it never saw, a missing value where nullable; then every such value in one row."""
    base = dict(base_rows[0]) if base_rows else contract.example_row()
    rows, mixed = [], []
    for feature in contract.features:
        values: list[Any] = []
        if feature.is_numeric:
            lo = feature.min if feature.min is not None else -1e6
            hi = feature.max if feature.max is not None else 1e6
            values = [lo + q * (hi - lo) for q in _QUANTILES]
            values = [round(v) for v in values] if feature.dtype == "int" else values
        elif feature.dtype == "datetime":
            start, end = feature.datetime_span()
            seconds = (end - start).astype(np.int64)
            values = [feature.datetime_value(start + np.timedelta64(int(q * seconds), "s")) for q in _QUANTILES]
        elif feature.allowed:
            values = list(feature.allowed)
        else:  # an open category: values the model knows, and one it never saw
            values = [*(known or {}).get(feature.name, [])[:_KNOWN_VALUES], "\x01never seen"]
        if feature.nullable:
            values.append(None)
        rows += [{**base, feature.name: v} for v in values]
        mixed.append(values)
    # Rows where every feature moves at once, cycling through the values above.
    for i in range(max((len(v) for v in mixed), default=0)):
        row = dict(base)
        for feature, values in zip(contract.features, mixed):
            if values:
                row[feature.name] = values[i % len(values)]
        rows.append(row)
    return rows


def known_categories(estimator: Any) -> dict[str, list[Any]]:
    """Each text column's categories as the pipeline's encoders learnt them (for the edge rows to try)."""
    from sklearn.compose import ColumnTransformer

    known: dict[str, list[Any]] = {}
    steps = getattr(estimator, "steps", [])
    transformer = steps[0][1] if steps else None
    if not isinstance(transformer, ColumnTransformer):
        return known
    for _, branch, columns in transformer.transformers_:
        last = branch.steps[-1][1] if hasattr(branch, "steps") else branch
        for column, categories in zip(columns, getattr(last, "categories_", [])):
            known[str(column)] = [c for c in categories.tolist() if isinstance(c, str)]
    return known


def classes(estimator: Any, contract: Contract) -> list[Any] | None:
    return estimator.classes_.tolist() if contract.task == "classification" else None


def reason(exc: Exception) -> str:
    """Why ONNX Runtime does not serve a model, in a line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text if len(text) <= 300 else text[:300] + '...'}"
