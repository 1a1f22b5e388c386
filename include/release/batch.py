"""Batch prediction: score a CSV file with a registered version, chunk by chunk, into a CSV or Parquet file.

The version is exported as a signed bundle (as `main.py export` does) and loaded with the prediction server's own
loader and predictor (serving/model.py), so a file scored here gets the answers `/invocations` gives for the same
rows.

Columns, by their role in schema.yaml (decided once, from the file's header): the features go to the model (a
datetime feature as the text the file holds: the model's own DatetimeFeatures step parses it); the id columns the
file has are copied to the output as the row key (with none of them, `batch.id_column`: copied from the file when it
has that column, else the 0-based row number); ignore columns are checked and dropped; the target may be present and
is dropped unchecked; any other column is an error, or dropped with `columns_not_in_schema: ignore`.

Each chunk of `batch.chunk_rows` rows is checked with the per-row Great Expectations suite of the columns it has (the
features, and the id and ignore columns the file has): ~0.36 CPU s per 100,000 rows of 8 columns. A missing
column or an unexpected one fails the run at once. A bad row (a value out of its range or set, a missing value where
none is allowed, text where a number or a datetime is expected) does what `batch.on_bad_rows` says:

- fail (the default): the run fails once the whole file has been checked, counting the bad rows per expectation
  with sample row ids; a wrong type fails it at once. Nothing is written.
- skip: the bad rows are left out of the output; every good row is scored.
- flag: every row is in the output, the bad ones without a prediction (empty prediction and probabilities) and
  `rejected` true.

With skip and flag, `<output>.rejected.csv` lists every problem of every bad row: its 0-based row number in the
input, its key columns, the column, the expectation it broke, what was expected and the value found (one line per
problem, so a row with two bad values has two lines; a header only when no row is bad).

Memory is bounded twice: reading and checking by `batch.chunk_rows`, predicting by `batch.encoded_mb`. A chunk goes
through the model in batches of at most encoded_mb / (the model's encoded width x 8 bytes) rows, the encoded width
being what its fitted preprocessing hands the estimator (one-hot of 3,000 values: ~3,000 columns). A local input is
streamed; an http(s) or s3 input is downloaded whole within data_source.max_bytes first (the ingestion stage's
reader and caps).

The output (and its side file) are written beside their targets and renamed into place once complete, the side file
first (an s3 output is uploaded once complete, the side file first), so a failed run leaves no output and an
existing output is replaced whole or not at all.

With `explain`, each row also gets its explanation (include/release/batch_explain.py): a `contribution:<input>`
column per input column, `explain_base_value`, `explain_output` and for a classification `explain_class`, from the
prediction server's explainer, in calls bounded like the predict calls.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from include.ml import tracking
from include.ml.components import ingestion
from include.ml.components.validation import frame_checker
from include.ml.entities import BatchConfig, BatchPredictionConfig, ColumnSpec, DataSourceConfig, SchemaConfig
from include.ml.exceptions import BatchPredictionError, DataValidationError
from include.release import batch_explain
from include.release.export import export_to_store
from include.release.signing import trusted_keys
from serving.contract import Contract
from serving.features import parse_datetimes
from serving.model import LoadedModel, load_bundle
from serving.s3_uri import parse_s3_uri

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
ON_BAD_ROWS = ("fail", "skip", "flag")
REJECTED_SUFFIX = ".rejected.csv"  # the side file of skip and flag: <output>.rejected.csv
FLAG_COLUMN = "rejected"  # flag: true on a bad row, which has no prediction
REJECTED_COLUMNS = ("row", "column", "expectation", "expected", "value")  # the side file's, around the key columns
# Failures that make the file unusable as a whole: the run stops at the first chunk that shows one.
BROKEN_FILE = ("expect_table_columns_to_match_set", "expect_column_to_exist", "expect_column_values_to_be_in_type_list")
TYPE_CHECK, NOT_NULL = "expect_column_values_to_be_in_type_list", "expect_column_values_to_not_be_null"
_SAMPLE = 5
_ENCODED_VALUE_BYTES = 8  # a float64: what one encoded value costs a dense predict (ONNX Runtime's one-hot is dense)


@dataclass(frozen=True)
class BatchPredictionResult:
    input_uri: str
    output_uri: str
    model_name: str
    model_version: str
    rows: int  # read from the input
    chunks: int
    seconds: float
    columns: list[str] = field(default_factory=list)
    on_bad_rows: str = "fail"
    rejected: int = 0  # bad rows skipped or flagged
    rejected_uri: str | None = None  # skip, flag: the side file with every bad row's reasons
    predict_rows: int = 0  # rows per predict call, from the model's encoded width and batch.encoded_mb
    explained: dict[str, Any] | None = None  # --explain: the explainer's method, output space, calibrated, classes

    def summary(self) -> str:
        text = (f"{self.rows:,} rows in {self.chunks} chunk(s) scored with {self.model_name} version "
                f"{self.model_version} in {self.seconds:.1f}s: {self.input_uri} -> {self.output_uri}")
        if self.rejected_uri:
            done = "left out" if self.on_bad_rows == "skip" else "flagged, without a prediction"
            text += f"; {self.rejected:,} bad row(s) {done}, reasons in {self.rejected_uri}"
        if self.explained:
            text += (f"; explained ({self.explained['method']}, {self.explained['output']}"
                     f"{', before calibration' if self.explained.get('calibrated') else ''})")
        return text

    def xcom(self) -> dict[str, Any]:
        return {"input_uri": self.input_uri, "output_uri": self.output_uri, "model_name": self.model_name,
                "model_version": self.model_version, "rows": self.rows, "chunks": self.chunks,
                "seconds": self.seconds, "on_bad_rows": self.on_bad_rows, "rejected": self.rejected,
                "rejected_uri": self.rejected_uri, "explained": self.explained}


def predict_file(config: BatchPredictionConfig, input_uri: str, output_uri: str, version: str = "champion",
                 on_bad_rows: str | None = None, explain: bool = False) -> BatchPredictionResult:
    """Score every row of `input_uri` with `version` (number or alias) into `output_uri`; bad rows as `on_bad_rows`
    says (fail, skip or flag; None: batch.on_bad_rows); with `explain`, each row's explanation columns too
    (include/release/batch_explain.py; BatchPredictionError if the model cannot be explained).

    Raises DataValidationError (a missing or unexpected column, or with fail a wrong type, at once, naming the
    column; with fail, rows breaking the schema's ranges, sets or nulls once the whole file is checked, counted per
    expectation with sample row ids), BatchPredictionError (the input is not a CSV file with data rows, or an output
    cannot be written), IngestionError (a remote input cannot be fetched, or breaks data_source's caps), or
    DeploymentError (the version cannot be exported). None of them leaves an output behind.
    """
    mode = on_bad_rows or config.batch.on_bad_rows
    if mode not in ON_BAD_ROWS:
        raise BatchPredictionError(f"on_bad_rows must be one of {', '.join(ON_BAD_ROWS)}, got {mode!r}")
    suffix = _format(output_uri)
    rejected_uri = output_uri + REJECTED_SUFFIX if mode != "fail" else None
    started = time.perf_counter()
    run = _Run(config, mode, version, explain)
    uris = [output_uri, *([rejected_uri] if rejected_uri else [])]
    with _staged_outputs(uris, config.source) as staged, ExitStack() as writers:
        write = writers.enter_context(_writer(staged[0], suffix, config.source))
        reject = writers.enter_context(_writer(staged[1], ".csv", config.source)) if rejected_uri else None
        for chunk in _read_chunks(input_uri, config.source, config.batch.chunk_rows):
            if chunk.empty:  # a file of just a header
                continue
            scored, problems = run.chunk(chunk)
            if scored is not None:
                write(scored)
            if reject is not None and problems is not None:
                reject(problems)
            log.info("predict: chunk %d: %d rows (%d so far, %d bad, %.0f rows/s)", run.chunks, len(chunk), run.rows,
                     run.rejected, run.rows / (time.perf_counter() - started))
        if not run.rows:
            raise BatchPredictionError(f"input {input_uri} has a header but no data rows")
        if run.bad:
            raise DataValidationError(_report(run.bad, run.rows), None)
    model = run.model
    assert model is not None and run.layout is not None  # rows were scored
    result = BatchPredictionResult(input_uri, output_uri, model.name, model.version, run.rows, run.chunks,
                                   round(time.perf_counter() - started, 2),
                                   _columns(model, run.layout.keys, mode, run.explainer), mode, run.rejected,
                                   rejected_uri, run.predict_rows, run.explainer and run.explainer.describe())
    log.info("predict: %s", result.summary())
    return result


def allowed_output(uri: str, batch: BatchConfig, root: Path) -> str:
    """A trigger form's output, made absolute (relative to the project root, as it is checked) if it is a local
    path; refused unless it lies under batch.allowed_outputs (default: exactly batch.output_uri), so a DAG run
    cannot write over whatever the worker may write."""
    allowed = batch.allowed_outputs or ((batch.output_uri,) if batch.output_uri else ())
    try:
        reason = ingestion.refused_source(uri, allowed, root) if allowed else "no output is allowed"
    except ValueError as exc:  # an entry of the list itself
        raise BatchPredictionError(f"batch.allowed_outputs: {exc}") from None
    if reason:
        raise BatchPredictionError(f"output {uri!r} is refused: {reason}; allowed: {', '.join(allowed) or 'none'} "
                                   "(list others in batch.allowed_outputs of config.yaml)")
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return str((root / Path(uri.removeprefix("file://")).expanduser()).resolve())  # where it was checked


def encoded_width(model: LoadedModel) -> int:
    """How many columns the model's estimator receives per row: what its fitted preprocessing outputs (the final
    step's n_features_in_), else the number of features (a model without a preprocessing step)."""
    estimator = model.estimator
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    width = getattr(final, "n_features_in_", None)
    return int(width) if width else max(len(model.contract.features), 1)


def predict_rows(model: LoadedModel, encoded_mb: int) -> int:
    """Rows per predict call: as many as keep the encoded matrix (rows x encoded width x 8 bytes) within
    `encoded_mb` MiB, at least one."""
    return max(1, encoded_mb * 2**20 // (encoded_width(model) * _ENCODED_VALUE_BYTES))


def _format(output_uri: str) -> str:
    suffix = Path(output_uri.split("?")[0]).suffix.lower()
    if suffix not in FORMATS:
        raise BatchPredictionError(f"output {output_uri}: the extension picks the format; expected one of "
                                   f"{', '.join(FORMATS)}, got {suffix or 'none'!r}")
    return suffix


def _load(config: BatchPredictionConfig, version: str) -> LoadedModel:
    """The version as a verified bundle in the model store, loaded as every prediction server loads it."""
    tracking.configure(config.mlflow)
    exported = export_to_store(config.mlflow.registered_model_name, version, config.model_store, config.signing)
    model = load_bundle(Path(exported.bundle), trusted_keys(config.signing))
    log.info("predict: scoring with %s version %s", model.name, model.version)
    return model


# --- columns by role ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Where each column of the file goes, decided from its header."""

    checked: SchemaConfig  # the per-row suite's columns: the features, and the id and ignore columns the file has
    keys: tuple[str, ...]  # the output's row key: the schema's id columns the file has, else batch.id_column
    numbered: bool  # the file has no key column: the key is the 0-based row number
    unchecked: tuple[str, ...]  # in the file, neither checked nor scored: the target, batch.id_column, ignored extras


_OUTPUT_COLUMNS = ("prediction", "model_name", "model_version", FLAG_COLUMN)


def _layout(columns: list[str], config: BatchPredictionConfig, mode: str, explain: bool = False) -> _Layout:
    schema, fallback = config.schema, config.batch.id_column
    present = set(columns)
    ids = tuple(c.name for c in schema.ids if c.name in present)
    optional = tuple(c for c in (*schema.ids, *schema.ignored) if c.name in present)
    checked = schema.model_copy(update={"columns": (*schema.features, *optional)})
    names = {c.name for c in checked.columns}
    listed = {c.name for c in schema.columns}
    dropped = {schema.target} | (set() if ids else {fallback})
    extra = [c for c in columns if c not in listed and c not in dropped]
    if extra and schema.columns_not_in_schema == "ignore":
        dropped |= set(extra)
        log.info("predict: columns not in schema.yaml, dropped (columns_not_in_schema: ignore): %s",
                 ", ".join(extra))
    # With columns_not_in_schema: error, the extra columns stay in the checked frame: the suite's column check names
    # them and fails the run.
    keys = ids or (fallback,)
    taken = {*_OUTPUT_COLUMNS, *(REJECTED_COLUMNS if mode != "fail" else ())}
    clash = [k for k in keys if k in taken or k.startswith("probability_")
             or (explain and batch_explain.is_explain_column(k))]
    if clash:
        raise BatchPredictionError(f"key column {clash[0]!r} has the name of a column batch prediction writes; rename "
                                   "it in the input and schema.yaml (or batch.id_column)")
    return _Layout(checked, keys, not ids and fallback not in present,
                   tuple(c for c in columns if c in dropped and c not in names))


# --- one run: chunk by chunk --------------------------------------------------------------------------------------

class _Run:
    """A run's state: the layout and checker (from the first chunk), the model (once a chunk is to be scored), the
    counts, and with fail the bad rows per expectation."""

    def __init__(self, config: BatchPredictionConfig, mode: str, version: str, explain: bool = False) -> None:
        self.config, self.mode, self.version, self.explain = config, mode, version, explain
        self.explainer: batch_explain.BatchExplainer | None = None  # with explain, once the model is loaded
        self.layout: _Layout | None = None
        self.check: Callable[[pd.DataFrame], list[dict[str, Any]]] | None = None
        self.model: LoadedModel | None = None
        self.predict_rows = 0
        self.bad: dict[tuple[str | None, str], dict[str, Any]] = {}  # fail: the bad rows per expectation
        self.rows = self.chunks = self.rejected = 0

    def chunk(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        """The chunk's output rows (None: nothing to write, the run will fail) and its problems (skip, flag)."""
        if self.layout is None:
            self.layout = _layout(list(chunk.columns), self.config, self.mode, self.explain)
            self.check = frame_checker(self.layout.checked, every_row=self.mode != "fail")
        layout, check = self.layout, self.check
        assert check is not None
        chunk.index = pd.RangeIndex(self.rows, self.rows + len(chunk))  # the row number: how checks name rows
        keys = pd.DataFrame({layout.keys[0]: chunk.index.to_numpy()}, index=chunk.index) if layout.numbered \
            else _keys(chunk, layout)
        checked = chunk.drop(columns=list(layout.unchecked))
        self.rows, self.chunks = self.rows + len(chunk), self.chunks + 1
        if self.mode == "fail":
            return self._all_or_nothing(checked, keys, check), None
        typed, problems = _typed(checked, layout.checked)
        failures = check(typed)
        _raise_if_broken(failures, keys)
        # A failure that names no row (GX could not evaluate the expectation) would lose rows silently: it fails.
        unexplained = [f for f in failures if not f.get("unexpected_rows")]
        if unexplained:
            raise DataValidationError([_by_key(f, keys) for f in unexplained], None)
        problems = _problems(problems, failures, checked, keys)
        bad = pd.Index(problems["row"].unique())
        self.rejected += len(bad)
        good = typed.index.difference(bad) if len(bad) else checked.index
        # Numbers as checked (text in a number column turned into numbers), the rest as read: datetimes as text.
        numeric = [c.name for c in layout.checked.features if c.is_numeric]
        inputs = checked.loc[good] if len(bad) else checked
        inputs = inputs.assign(**{name: typed.loc[good, name] for name in numeric})
        model = self._model()
        scored = self._scored(model, inputs, keys.loc[good])
        if self.mode == "flag":
            scored = _flagged(scored, keys, good, model)
        return scored, problems

    def _all_or_nothing(self, checked: pd.DataFrame, keys: pd.DataFrame,
                        check: Callable[[pd.DataFrame], list[dict[str, Any]]]) -> pd.DataFrame | None:
        """fail: the chunk scored if no row of the file was bad so far; else only counted, to report every bad row."""
        failures = check(checked)
        _raise_if_broken(failures, keys)
        _count(self.bad, [_by_key(f, keys) for f in failures])
        if self.bad:
            return None
        return self._scored(self._model(), checked, keys)

    def _model(self) -> LoadedModel:
        if self.model is None:  # loaded once the first chunk passed: a broken file fails sooner
            self.model = _load(self.config, self.version)
            self.predict_rows = predict_rows(self.model, self.config.batch.encoded_mb)
            log.info("predict: the model's encoded input is %d columns wide: at most %d rows per predict call "
                     "(batch.encoded_mb: %d)", encoded_width(self.model), self.predict_rows,
                     self.config.batch.encoded_mb)
            if self.explain:
                self.explainer = batch_explain.BatchExplainer.for_model(
                    self.model, encoded_width(self.model), self.config.batch.encoded_mb)
        return self.model

    def _scored(self, model: LoadedModel, features: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
        columns = _model_columns(model.contract, features)
        values, probabilities = _predict(model, columns, len(features), self.predict_rows)
        out = {name: keys[name].to_numpy() for name in keys.columns} | {"prediction": _labels(model, values)}
        if _gives_probabilities(model):
            classes = _classes(model)
            probabilities = np.empty((0, len(classes))) if probabilities is None else probabilities  # no rows
            out |= {f"probability_{label}": probabilities[:, i] for i, label in enumerate(classes)}
        scored = pd.DataFrame(out).assign(model_name=model.name, model_version=model.version)
        if self.explainer is not None:
            scored = scored.assign(**self.explainer.explain(columns, values))
        return scored


def _keys(chunk: pd.DataFrame, layout: _Layout) -> pd.DataFrame:
    """The key columns as read, an int id column as nullable integers: one missing id (which makes pandas read the
    chunk's column as floats) leaves the others as they were, and a Parquet output one column type."""
    int_ids = {c.name for c in layout.checked.ids if c.dtype == "int"}
    keys = chunk[list(layout.keys)]
    whole = [name for name in layout.keys if name in int_ids and pd.api.types.is_numeric_dtype(keys[name])
             and (keys[name].dropna() % 1 == 0).all()]
    return keys.astype(dict.fromkeys(whole, "Int64")) if whole else keys


# --- checks -------------------------------------------------------------------------------------------------------

def _raise_if_broken(failures: list[dict[str, Any]], keys: pd.DataFrame) -> None:
    broken = [f for f in failures if f["expectation"] in BROKEN_FILE]
    if broken:
        raise DataValidationError([_by_key(f, keys) for f in broken], None)


def _by_key(failure: dict[str, Any], keys: pd.DataFrame) -> dict[str, Any]:
    """A failure with its sample rows named by the first key column instead of the row number."""
    failure = {k: v for k, v in failure.items() if k != "unexpected_rows"}
    if failure.get("rows"):
        failure["rows"] = [_plain(v) for v in keys.iloc[:, 0].loc[failure["rows"]].tolist()]
    return failure


def _typed(frame: pd.DataFrame, schema: SchemaConfig) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """skip, flag: the values that are not of their column's type, as problems of their rows (text where a number or
    a datetime is expected, a fraction or a missing value in a non-nullable int column), and the frame without those
    rows, each column as its check expects it: numbers as numbers, datetimes parsed."""
    problems, bad = [], np.zeros(len(frame), dtype=bool)
    columns: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.name not in frame:
            continue  # the suite's column check reports it
        values = frame[spec.name]
        if spec.is_numeric:
            if values.dtype == bool:  # true / false: not numbers
                numbers = pd.Series(np.nan, index=frame.index)
            else:
                numbers = values if pd.api.types.is_numeric_dtype(values.dtype) \
                    else pd.to_numeric(values, errors="coerce")
            wrong = numbers.isna().to_numpy() & values.notna().to_numpy()
            if spec.dtype == "int":
                present = numbers.notna().to_numpy()
                wrong |= present & (numbers.to_numpy(np.float64, na_value=np.nan) % 1 != 0)
                if not spec.nullable:  # an int column holds no missing value: one would make the column float
                    missing = ~present & ~wrong
                    problems.append(_problem(frame.index[missing], spec, NOT_NULL, ""))
                    bad |= missing
            problems.append(_problem(frame.index[wrong], spec, TYPE_CHECK, f"dtype={spec.dtype}"))
            bad |= wrong
            columns[spec.name] = numbers
        elif spec.dtype == "datetime":
            moments, wrong = parse_datetimes(values, spec.format)
            problems.append(_problem(frame.index[wrong], spec, TYPE_CHECK,
                                     f"dtype=datetime, format={spec.format or 'ISO 8601'}"))
            bad |= wrong
            columns[spec.name] = pd.Series(moments, index=frame.index)
    typed = frame.assign(**columns) if columns else frame
    typed = typed[~bad] if bad.any() else typed
    ints = {s.name: np.int64 for s in schema.columns if s.dtype == "int" and not s.nullable and s.name in typed}
    return (typed.astype(ints) if ints else typed), [p for p in problems if len(p)]


def _problem(rows: pd.Index, spec: ColumnSpec, expectation: str, expected: str) -> pd.DataFrame:
    return pd.DataFrame({"row": rows.to_numpy(), "column": spec.name, "expectation": expectation,
                         "expected": expected})


def _problems(typed: list[pd.DataFrame], failures: list[dict[str, Any]], frame: pd.DataFrame,
              keys: pd.DataFrame) -> pd.DataFrame:
    """Every problem of the chunk, one line per bad value, in row order: row, the key columns, column, expectation,
    expected, value (as read, empty when missing)."""
    found = typed + [pd.DataFrame({"row": np.asarray(f["unexpected_rows"], dtype=np.int64), "column": f["column"],
                                   "expectation": f["expectation"], "expected": f["expected"]})
                     for f in failures if f.get("unexpected_rows")]
    if not found:
        problems = pd.DataFrame({"row": np.empty(0, dtype=np.int64), "column": [], "expectation": [], "expected": []})
    else:
        problems = pd.concat(found, ignore_index=True).sort_values("row", kind="stable", ignore_index=True)
    values = pd.Series([frame.at[row, column] for row, column in zip(problems["row"], problems["column"])],
                       dtype=object)
    problems["value"] = values.where(values.notna(), None)
    key_values = keys.loc[problems["row"]].reset_index(drop=True)
    return pd.concat([problems[["row"]], key_values, problems[["column", "expectation", "expected", "value"]]],
                     axis=1)


def _count(bad: dict[tuple[str | None, str], dict[str, Any]], failures: list[dict[str, Any]]) -> None:
    """Add one chunk's bad rows to the counts per expectation, keeping the first few examples and row ids."""
    for failure in failures:
        seen = bad.setdefault((failure["column"], failure["expectation"]),
                              {**failure, "unexpected_count": 0, "examples": [], "rows": []})
        seen["unexpected_count"] += failure["unexpected_count"] or 0
        seen["examples"] = (seen["examples"] + failure["examples"])[:_SAMPLE]
        seen["rows"] = (seen["rows"] + failure["rows"])[:_SAMPLE]


def _report(bad: dict[tuple[str | None, str], dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    return [{**failure, "unexpected_percent": 100 * failure["unexpected_count"] / rows} for failure in bad.values()]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --- scoring ------------------------------------------------------------------------------------------------------

def _model_columns(contract: Contract, features: pd.DataFrame) -> dict[str, np.ndarray]:
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


def _predict(model: LoadedModel, columns: dict[str, np.ndarray], rows: int,
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


def _classes(model: LoadedModel) -> list[str]:
    return [str(c) for c in getattr(model.estimator, "classes_", [])]


def _gives_probabilities(model: LoadedModel) -> bool:
    """Whether the predictor answers class probabilities (as LoadedModel.sklearn_predict and the compiled
    predictor do for a classifier with predict_proba)."""
    return model.contract.task == "classification" and hasattr(model.estimator, "predict_proba")


def _labels(model: LoadedModel, values: np.ndarray) -> Any:
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


def _flagged(scored: pd.DataFrame, keys: pd.DataFrame, good: pd.Index, model: LoadedModel) -> pd.DataFrame:
    """flag: every row of the chunk in input order, the good ones scored, the bad ones with their key, no prediction
    and rejected true."""
    out = scored.set_index(good).reindex(keys.index)
    for name in keys.columns:
        out[name] = keys[name]
    out["model_name"], out["model_version"] = model.name, model.version
    out[FLAG_COLUMN] = ~keys.index.isin(good)
    return out.reset_index(drop=True)


def _columns(model: LoadedModel, keys: tuple[str, ...], mode: str,
             explainer: batch_explain.BatchExplainer | None = None) -> list[str]:
    classes = [f"probability_{c}" for c in _classes(model)] if _gives_probabilities(model) else []
    explained = explainer.columns() if explainer else []
    return [*keys, "prediction", *classes, "model_name", "model_version", *explained,
            *([FLAG_COLUMN] if mode == "flag" else [])]


# --- input --------------------------------------------------------------------------------------------------------

def _read_chunks(uri: str, source: DataSourceConfig, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The input in chunks of `chunk_rows`: a local CSV streamed, anything else (a URL, a zip) read whole by the
    ingestion stage's reader, within its caps."""
    local = "://" not in uri or uri.startswith("file://")
    path = Path(uri.removeprefix("file://"))
    if local and not path.is_file():
        raise BatchPredictionError(f"input {uri} is not a file")
    if local and not zipfile.is_zipfile(path):
        handle: Any = path
    else:
        remote = source.model_copy(update={"uri": uri})
        handle = io.BytesIO(ingestion.extract_csv(ingestion.fetch(remote), remote))
    try:
        with pd.read_csv(handle, sep=source.separator, chunksize=chunk_rows) as reader:
            yield from reader
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:  # EmptyDataError is a ValueError
        raise BatchPredictionError(f"input {uri} is not a valid CSV with separator {source.separator!r}: {exc}") \
            from exc


# --- output -------------------------------------------------------------------------------------------------------

@contextmanager
def _writer(path: Path, suffix: str, source: DataSourceConfig) -> Iterator[Callable[[pd.DataFrame], None]]:
    """A function appending a scored chunk to `path` (CSV in the configured format, or Parquet row groups)."""
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as file:
            def write_csv(frame: pd.DataFrame) -> None:
                frame.to_csv(file, sep=source.separator, index=False, header=file.tell() == 0)

            yield write_csv
            _sync(file)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet: dict[str, Any] = {}

    def write_parquet(frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if "writer" not in parquet:
            parquet["writer"] = pq.ParquetWriter(path, table.schema)
        try:
            table = table.cast(parquet["writer"].schema)
        except (pa.ArrowInvalid, ValueError) as exc:  # e.g. an id column that turns from numbers to text
            raise BatchPredictionError(f"a chunk's columns {table.schema.types} do not match the first chunk's "
                                       f"{parquet['writer'].schema.types}: {exc}") from exc
        parquet["writer"].write_table(table)

    try:
        yield write_parquet
    finally:
        if "writer" in parquet:
            parquet["writer"].close()
    with path.open("rb+") as file:
        _sync(file)


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())


@dataclass(frozen=True)
class _Place:
    uri: str
    local: Path | None = None  # a local target
    bucket: str = ""  # or an s3 object
    key: str = ""


def _place(uri: str) -> _Place:
    if uri.startswith("s3://"):  # the key the allow-list checked, as it is (serving/s3_uri.py)
        try:
            s3 = parse_s3_uri(uri)
        except ValueError as exc:
            raise BatchPredictionError(f"output {uri!r} is refused: {exc}") from None
        return _Place(uri, bucket=s3.bucket, key=s3.key)
    if "://" in uri and not uri.startswith("file://"):
        raise BatchPredictionError(f"unsupported output {uri!r}: use a local path or s3://bucket/key")
    target = Path(uri.removeprefix("file://"))
    if target.is_dir():
        raise BatchPredictionError(f"output {uri} is a directory; give a file name ending in .csv or .parquet")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchPredictionError(f"output {uri} cannot be written: {exc}") from exc
    if not os.access(target.parent, os.W_OK):
        raise BatchPredictionError(f"output {uri} cannot be written: {target.parent} is not writable")
    return _Place(uri, local=target)


@contextmanager
def _staged_outputs(uris: list[str], source: DataSourceConfig) -> Iterator[list[Path]]:
    """Temporary files that become `uris` only if the block succeeds: renamed onto local targets (each in its
    target's directory, so each rename is atomic) or uploaded whole to s3://bucket/key. The first (the output) is
    published last, so it never appears without its side files; if publishing it fails, they are removed again."""
    places = [_place(uri) for uri in uris]
    staged: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="batch-predict-") as tmp:
        try:
            for i, place in enumerate(places):
                if place.local is None:
                    staged.append(Path(tmp) / f"{i}-{Path(place.key).name}")
                    continue
                fd, name = tempfile.mkstemp(dir=place.local.parent, prefix=f".{place.local.name}.", suffix=".tmp")
                os.close(fd)
                staged.append(Path(name))
            yield staged
            published: list[_Place] = []
            for place, path in reversed(list(zip(places, staged))):
                try:
                    _publish(path, place, source)
                except BaseException:
                    for done in published:
                        _unpublish(done, source)
                    raise
                published.append(place)
        finally:
            for path in staged:
                path.unlink(missing_ok=True)


def _publish(path: Path, place: _Place, source: DataSourceConfig) -> None:
    if place.local is None:
        _upload(path, place.bucket, place.key, source)
        return
    try:
        os.replace(path, place.local)
    except OSError as exc:
        raise BatchPredictionError(f"output {place.uri} cannot be written: {exc}") from exc


def _unpublish(place: _Place, source: DataSourceConfig) -> None:
    """Best effort: remove a side file whose output could not be published."""
    try:
        if place.local is not None:
            place.local.unlink(missing_ok=True)
        else:
            import boto3

            boto3.client("s3", endpoint_url=source.s3_endpoint_url).delete_object(Bucket=place.bucket, Key=place.key)
    except Exception as exc:  # noqa: BLE001 - the output's own error is what the caller must see
        log.warning("predict: could not remove %s after the output failed: %s", place.uri, exc)


def _upload(path: Path, bucket: str, key: str, source: DataSourceConfig) -> None:
    import boto3
    import boto3.exceptions
    import botocore.exceptions

    try:
        boto3.client("s3", endpoint_url=source.s3_endpoint_url).upload_file(str(path), bucket, key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.S3UploadFailedError) \
            as exc:
        raise BatchPredictionError(f"output s3://{bucket}/{key} could not be uploaded: {exc}") from exc
