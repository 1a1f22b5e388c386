"""Batch prediction: score a CSV or Parquet file with a registered version, chunk by chunk, into a CSV or Parquet
file (in partitions, on several workers: include/release/partitions.py).

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
streamed (a Parquet file a row group at a time); an http(s) or s3 input is downloaded whole within
data_source.max_bytes first (include/release/batch_input.py: the ingestion stage's reader and caps).

The output (and its side file) are written beside their targets and renamed into place once complete, the side file
first (an s3 output is uploaded once complete, the side file first), so a failed run leaves no output and an
existing output is replaced whole or not at all.

With `explain`, each row also gets its explanation (include/release/batch_explain.py): a `contribution:<input>`
column per input column, `explain_base_value`, `explain_output` and for a classification `explain_class`, from the
prediction server's explainer, in calls bounded like the predict calls.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from include.ml import tracking
from include.ml.components import ingestion
from include.ml.components.validation import frame_checker
from include.ml.config_file import BatchConfig
from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError, DataValidationError
from include.ml.schema_file import SchemaConfig
from include.release import batch_explain
from include.release.batch_checks import (
    by_key,
    count_failures,
    problems_frame,
    raise_if_broken,
    report,
    typed_frame,
)
from include.release.batch_input import read_chunks
from include.release.batch_output import staged_outputs, writer
from include.release.batch_scoring import (
    FLAG_COLUMN,
    flagged,
    gives_probabilities,
    labels,
    model_classes,
    model_columns,
    output_columns,
    predict_values,
)
from include.release.export import export_to_store
from include.release.signing import trusted_keys
from serving.model import LoadedModel, load_bundle

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
ON_BAD_ROWS = ("fail", "skip", "flag")
REJECTED_SUFFIX = ".rejected.csv"  # the side file of skip and flag: <output>.rejected.csv
REJECTED_COLUMNS = ("row", "column", "expectation", "expected", "value")  # the side file's, around the key columns
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
    partitions: int = 1  # scored in this many partitions (include/release/partitions.py)
    manifest_uri: str | None = None  # partitioned: each partition's input range and row counts

    def summary(self) -> str:
        parts = f" and {self.partitions} partitions" if self.partitions > 1 else ""
        text = (f"{self.rows:,} rows in {self.chunks} chunk(s){parts} scored with {self.model_name} version "
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
                "rejected_uri": self.rejected_uri, "explained": self.explained, "partitions": self.partitions,
                "manifest_uri": self.manifest_uri}


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
    suffix = output_format(output_uri)
    rejected_uri = output_uri + REJECTED_SUFFIX if mode != "fail" else None
    started = time.perf_counter()
    run = ScoringRun(config, mode, version, explain)
    uris = [output_uri, *([rejected_uri] if rejected_uri else [])]
    with staged_outputs(uris, config.source) as staged, ExitStack() as writers:
        write = writers.enter_context(writer(staged[0], suffix, config.source))
        reject = writers.enter_context(writer(staged[1], ".csv", config.source)) if rejected_uri else None
        for chunk in read_chunks(input_uri, config.source, config.batch.chunk_rows):
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
            raise DataValidationError(report(run.bad, run.rows), None)
    model = run.model
    assert model is not None and run.layout is not None  # rows were scored
    result = BatchPredictionResult(input_uri, output_uri, model.name, model.version, run.rows, run.chunks,
                                   round(time.perf_counter() - started, 2),
                                   output_columns(model, run.layout.keys, mode, run.explainer), mode, run.rejected,
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
    resolved = str((root / Path(uri.removeprefix("file://")).expanduser()).resolve())  # where it was checked
    return resolved + "/" if uri.endswith("/") else resolved  # a Parquet dataset directory stays one


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


def output_format(output_uri: str) -> str:
    if output_uri.endswith("/"):
        raise BatchPredictionError(f"output {output_uri}: an output ending in '/' is a Parquet dataset directory, "
                                   "which only a partitioned run writes (--partitions, ml_batch_predict)")
    suffix = Path(output_uri.split("?")[0]).suffix.lower()
    if suffix not in FORMATS:
        raise BatchPredictionError(f"output {output_uri}: the extension picks the format; expected one of "
                                   f"{', '.join(FORMATS)}, got {suffix or 'none'!r}")
    return suffix


def load_version(config: BatchPredictionConfig, version: str) -> LoadedModel:
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

class ScoringRun:
    """A run's state: the layout and checker (from the first chunk), the model (once a chunk is to be scored), the
    counts, and with fail the bad rows per expectation."""

    def __init__(self, config: BatchPredictionConfig, mode: str, version: str, explain: bool = False,
                 load: Callable[[BatchPredictionConfig, str], LoadedModel] | None = None) -> None:
        """`load`: how the version is loaded (default: exported and loaded, include/release/partition_runs.py
        reuses a process's loaded bundle across its partitions)."""
        self.config, self.mode, self.version, self.explain = config, mode, version, explain
        self._load = load or load_version
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
        typed, problems = typed_frame(checked, layout.checked)
        failures = check(typed)
        raise_if_broken(failures, keys)
        # A failure that names no row (GX could not evaluate the expectation) would lose rows silently: it fails.
        unexplained = [f for f in failures if not f.get("unexpected_rows")]
        if unexplained:
            raise DataValidationError([by_key(f, keys) for f in unexplained], None)
        problems = problems_frame(problems, failures, checked, keys)
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
            scored = flagged(scored, keys, good, model)
        return scored, problems

    def _all_or_nothing(self, checked: pd.DataFrame, keys: pd.DataFrame,
                        check: Callable[[pd.DataFrame], list[dict[str, Any]]]) -> pd.DataFrame | None:
        """fail: the chunk scored if no row of the file was bad so far; else only counted, to report every bad row."""
        failures = check(checked)
        raise_if_broken(failures, keys)
        count_failures(self.bad, [by_key(f, keys) for f in failures])
        if self.bad:
            return None
        return self._scored(self._model(), checked, keys)

    def _model(self) -> LoadedModel:
        if self.model is None:  # loaded once the first chunk passed: a broken file fails sooner
            self.model = self._load(self.config, self.version)
            self.predict_rows = predict_rows(self.model, self.config.batch.encoded_mb)
            log.info("predict: the model's encoded input is %d columns wide: at most %d rows per predict call "
                     "(batch.encoded_mb: %d)", encoded_width(self.model), self.predict_rows,
                     self.config.batch.encoded_mb)
            if self.explain:
                self.explainer = batch_explain.BatchExplainer.for_model(
                    self.model, encoded_width(self.model), self.config.batch.encoded_mb)
        return self.model

    def _scored(self, model: LoadedModel, features: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
        columns = model_columns(model.contract, features)
        values, probabilities = predict_values(model, columns, len(features), self.predict_rows)
        out = {name: keys[name].to_numpy() for name in keys.columns} | {"prediction": labels(model, values)}
        if gives_probabilities(model):
            classes = model_classes(model)
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
