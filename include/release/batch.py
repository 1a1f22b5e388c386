"""Batch prediction: score a CSV file with a registered version, chunk by chunk, into a CSV or Parquet file.

The version is exported as a signed bundle (as `main.py export` does) and loaded with the prediction server's own
loader and predictor (serving/model.py), so a file scored here gets the answers `/invocations` gives for the same
rows. Each chunk is checked with the Great Expectations suite of schema.yaml (the target left out) before it is
scored: ~0.16 s per 100,000 rows of the wine schema, ~2 s for a million, so there is no separate fast path.
Memory is bounded by `batch.chunk_rows` whatever the size of a local file; an http(s) or s3 input is downloaded
whole within data_source.max_bytes first (the ingestion stage's reader and caps).

The output is written beside its target and renamed into place once complete (an s3 output is uploaded once
complete), so a failed run leaves no output, and an existing output is replaced whole or not at all.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml import artifacts, tracking
from include.ml.components import ingestion
from include.ml.components.validation import frame_checker
from include.ml.entities import BatchConfig, BatchPredictionConfig, DataSourceConfig
from include.ml.exceptions import BatchPredictionError, DataValidationError
from include.release.export import export_to_store
from include.release.signing import trusted_keys
from serving.model import LoadedModel, load_bundle

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
# Failures that make the file unusable as a whole: the run stops at the first chunk that shows one.
BROKEN_FILE = ("expect_table_columns_to_match_set", "expect_column_to_exist", "expect_column_values_to_be_in_type_list")
_SAMPLE = 5


@dataclass(frozen=True)
class BatchPredictionResult:
    input_uri: str
    output_uri: str
    model_name: str
    model_version: str
    rows: int
    chunks: int
    seconds: float
    columns: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.rows:,} rows in {self.chunks} chunk(s) scored with {self.model_name} version "
                f"{self.model_version} in {self.seconds:.1f}s: {self.input_uri} -> {self.output_uri}")

    def xcom(self) -> dict[str, Any]:
        return {"input_uri": self.input_uri, "output_uri": self.output_uri, "model_name": self.model_name,
                "model_version": self.model_version, "rows": self.rows, "chunks": self.chunks,
                "seconds": self.seconds}


def predict_file(config: BatchPredictionConfig, input_uri: str, output_uri: str,
                 version: str = "champion") -> BatchPredictionResult:
    """Score every row of `input_uri` with `version` (number or alias) into `output_uri`.

    Raises DataValidationError (a missing column or a wrong type at once, naming the column; rows breaking the
    schema's ranges, sets or nulls once the whole file is checked, counted per expectation with sample row ids),
    BatchPredictionError (the input is not a CSV file with data rows, or the output cannot be written),
    IngestionError (a remote input cannot be fetched, or breaks data_source's caps), or DeploymentError (the
    version cannot be exported). None of them leaves an output behind.
    """
    suffix = _format(output_uri)
    started = time.perf_counter()
    check = frame_checker(config.schema.model_copy(update={"columns": config.schema.features}))
    model: LoadedModel | None = None  # loaded once the first chunk passed: a broken file fails sooner
    bad: dict[tuple[str | None, str], dict[str, Any]] = {}
    rows = chunks = 0
    with _staged_output(output_uri, config.source) as staged, _writer(staged, suffix, config.source) as write:
        for chunk in _read_chunks(input_uri, config.source, config.batch.chunk_rows):
            if chunk.empty:  # a file of just a header
                continue
            features, ids = _split(chunk, config, rows)
            failures = check(features)
            broken = [f for f in failures if f["expectation"] in BROKEN_FILE]
            if broken:
                raise DataValidationError(broken, None)
            _count(bad, failures)
            if not bad:  # once a row is bad the run fails: the rest is only checked, to report every bad row
                model = model or _load(config, version)
                write(_scored(model, features, ids, config.batch.id_column))
            rows, chunks = rows + len(chunk), chunks + 1
            log.info("predict: chunk %d: %d rows (%d so far, %.0f rows/s)", chunks, len(chunk), rows,
                     rows / (time.perf_counter() - started))
        if not rows:
            raise BatchPredictionError(f"input {input_uri} has a header but no data rows")
        if bad:
            raise DataValidationError(_report(bad, rows), None)
    assert model is not None  # rows were scored
    result = BatchPredictionResult(input_uri, output_uri, model.name, model.version, rows, chunks,
                                   round(time.perf_counter() - started, 2), _columns(model, config.batch.id_column))
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


def _split(chunk: pd.DataFrame, config: BatchPredictionConfig, offset: int) -> tuple[pd.DataFrame, pd.Series]:
    """The chunk's features (without the target or the id column, if the file has them) indexed by row id, and the
    row ids: the id column if the file has one (it may be a feature too), else the 0-based row number."""
    id_column = config.batch.id_column
    ids = chunk[id_column] if id_column in chunk else \
        pd.Series(np.arange(offset, offset + len(chunk)), index=chunk.index, name=id_column)
    names = {c.name for c in config.schema.features}
    features = chunk.drop(columns=[c for c in (id_column, config.schema.target) if c in chunk and c not in names])
    features.index = pd.Index(ids.to_numpy())  # validation reports bad rows by these labels (unnamed: bare ids)
    return features, ids


# --- validation report --------------------------------------------------------------------------------------------

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


# --- scoring and output -------------------------------------------------------------------------------------------

def _scored(model: LoadedModel, features: pd.DataFrame, ids: pd.Series, id_column: str) -> pd.DataFrame:
    """The model's answers for a chunk, computed from the same columns the server builds from a request:
    float64 for numeric features, Python objects (None when missing) for the others."""
    columns = {}
    for feature in model.contract.features:
        if feature.name not in features:
            raise BatchPredictionError(f"{model.name} version {model.version} needs column {feature.name!r}, "
                                       "which schema.yaml does not list: the model was trained on another schema")
        values = features[feature.name]
        columns[feature.name] = values.to_numpy(np.float64, na_value=np.nan) if feature.is_numeric \
            else values.astype(object).where(values.notna(), None).to_numpy()
    prediction = model.predict(columns)
    out = {id_column: ids.to_numpy(), "prediction": prediction.values}
    if prediction.probabilities is not None:
        probabilities = pd.DataFrame(prediction.probabilities)
        out |= {f"probability_{label}": probabilities[label].to_numpy() for label in probabilities.columns}
    return pd.DataFrame(out).assign(model_name=model.name, model_version=model.version)


def _columns(model: LoadedModel, id_column: str) -> list[str]:
    classes = [] if model.contract.task != "classification" else \
        [f"probability_{c}" for c in getattr(model.estimator, "classes_", [])]
    return [id_column, "prediction", *classes, "model_name", "model_version"]


@contextmanager
def _writer(path: Path, suffix: str, source: DataSourceConfig) -> Iterator[Any]:
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


@contextmanager
def _staged_output(uri: str, source: DataSourceConfig) -> Iterator[Path]:
    """A temporary file that becomes `uri` only if the block succeeds: renamed onto a local target (same
    directory, so the rename is atomic), or uploaded whole to s3://bucket/key."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise BatchPredictionError(f"output {uri!r} is not of the form s3://bucket/key")
        with tempfile.TemporaryDirectory(prefix="batch-predict-") as tmp:
            staged = Path(tmp) / Path(key).name
            yield staged
            _upload(staged, bucket, key, source)
        return
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
    with artifacts.atomic_path(target) as staged:
        yield staged


def _upload(path: Path, bucket: str, key: str, source: DataSourceConfig) -> None:
    import boto3
    import boto3.exceptions
    import botocore.exceptions

    try:
        boto3.client("s3", endpoint_url=source.s3_endpoint_url).upload_file(str(path), bucket, key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.S3UploadFailedError) \
            as exc:
        raise BatchPredictionError(f"output s3://{bucket}/{key} could not be uploaded: {exc}") from exc
