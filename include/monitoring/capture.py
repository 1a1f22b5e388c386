"""The prediction server's captured rows of a period, read back (the capture contract, docs/monitoring.md).

Files are `<capture dir>/<model>/<YYYY-MM-DD>/<file>.jsonl.gz`, one JSON object per input row; only complete files
(the `.jsonl.gz` suffix, never `.part`) are read. The capture dir is a local directory or `s3://bucket/prefix`
(what EC2 hosts ship to). Each file is parsed by pyarrow's multithreaded JSON reader and filtered to the model
version and the period before anything becomes a pandas object, so memory follows the rows kept. A file pyarrow
refuses (a field holding values of two JSON types: an open category sent as text by one client and as a number by
another, a key given as 17 and as "17"; a key number past 64 bits) is read line by line instead, to the same frame.

Each file is decompressed into memory first, never past `monitoring.max_file_mb` nor `monitoring.max_file_rows`
(config.yaml): a file past either (a gzip bomb) is skipped with a warning naming it and the cap (`Captured.skipped`),
so a planted file can neither exhaust the monitor's memory nor stop its run.

The frame: request_id, row, timestamp, the schema's id columns (each row's captured `key`, as text; None where
the request sent none), the features (numbers as float, datetimes as datetime64 in UTC, categories and ordinals
as text), prediction. Given a classifier's classes, also the probability it gave each class (`Captured.probabilities`).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from include.ml.config_file import MonitoringSources
from include.ml.exceptions import MonitoringError
from include.ml.schema_file import SchemaConfig
from serving.capture import model_folder
from serving.features import parse_datetimes
from serving.s3_uri import parse_s3_uri

log = logging.getLogger(__name__)

SUFFIX = ".jsonl.gz"
PREDICTION = "prediction"
PROBABILITIES = "probabilities"
KEYS = ("request_id", "row")


@dataclass(frozen=True)
class Captured:
    frame: pd.DataFrame  # request_id, row, timestamp, the features, prediction
    files: int
    # Classification, when the classes were given: the captured probability of each class (one column each, rows as
    # in `frame`; NaN where a row has none). None otherwise.
    probabilities: pd.DataFrame | None = None
    skipped: tuple[str, ...] = ()  # files past monitoring.max_file_mb / max_file_rows: why, naming each


class CaptureFileTooLarge(MonitoringError):
    """A capture file that decompresses past a cap of monitoring: (max_file_mb, max_file_rows)."""


def days(start: datetime, end: datetime) -> list[str]:
    """The UTC dates (folder names) a period touches."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def collect(config: MonitoringSources, schema: SchemaConfig, model_name: str, version: str, start: datetime,
            end: datetime, classes: Sequence[str] = ()) -> Captured:
    """The rows captured for `model_name` `version` with start <= timestamp < end (aware datetimes, UTC); with the
    model's `classes` (as text), their captured probabilities too."""
    frames, probabilities, count, skipped = [], [], 0, []
    with local_files(config, model_name, days(start, end)) as files:
        for path, name in files:
            try:
                frame, proba = read_file(path, schema, model_name, version, start, end, classes,
                                         max_bytes=int(config.max_file_mb * 2**20), max_rows=config.max_file_rows)
            except CaptureFileTooLarge as exc:
                log.warning("capture: skipping %s: %s", name, exc)
                skipped.append(f"{name}: {exc}")
                continue
            frames.append(frame)
            probabilities.append(proba)
            count += 1
    frame = pd.concat(frames, ignore_index=True) if frames else empty_frame(schema)
    proba = None
    if classes:
        proba = pd.concat(probabilities, ignore_index=True) if frames else \
            pd.DataFrame({str(c): np.empty(0) for c in classes})
    log.info("capture: %d rows of %s v%s from %d file(s) in %s, %s to %s", len(frame), model_name, version, count,
             config.capture_dir, start.isoformat(), end.isoformat())
    return Captured(frame, count, proba, tuple(skipped))


def empty_frame(schema: SchemaConfig) -> pd.DataFrame:
    """The frame of no captured rows: its columns, none of them typed."""
    return pd.DataFrame(columns=[*KEYS, "timestamp", *(c.name for c in schema.ids), *(c.name for c in schema.features),
                                 PREDICTION])


def read_file(path: Path, schema: SchemaConfig, model_name: str, version: str, start: datetime, end: datetime,
              classes: Sequence[str] = (), max_bytes: int = 256 * 2**20,
              max_rows: int = 2_000_000) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One capture file's rows of the model version and period, one column per id column and per feature; and with
    `classes`, each class's probability (one column per class, NaN where a row has none; None without classes).
    Raises CaptureFileTooLarge when it decompresses past `max_bytes` or holds more than `max_rows` lines."""
    import pyarrow as pa

    data = decompressed(path, max_bytes, max_rows)
    try:
        return _read_arrow(data, path, schema, model_name, version, start, end, classes)
    except pa.ArrowInvalid as exc:  # two JSON types in one field, a number past int64, or no JSON at all
        log.info("capture: pyarrow cannot read %s (%s); reading it line by line", path, exc)
    return _read_lines(data, path, schema, model_name, version, start, end, classes)


def decompressed(path: Path, max_bytes: int, max_rows: int) -> bytes:
    """The file's decompressed bytes, read in chunks and given up on as soon as they pass a cap: memory never
    holds more than `max_bytes` (plus one chunk) of it, however small the file or large its ratio."""
    import gzip
    import zlib

    chunk, buffer, lines = 1 << 20, bytearray(), 0
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(chunk):
                buffer += block
                lines += block.count(b"\n")
                if len(buffer) > max_bytes:
                    raise CaptureFileTooLarge(f"it decompresses past {max_bytes:,} bytes (monitoring.max_file_mb); "
                                              f"given up after {len(buffer):,}")
                if lines > max_rows:
                    raise CaptureFileTooLarge(f"it holds more than {max_rows:,} rows (monitoring.max_file_rows)")
    except (OSError, EOFError, zlib.error) as exc:
        raise MonitoringError(f"capture file {path} is not a readable gzip file: {exc}") from exc
    return bytes(buffer)


def _read_arrow(data: bytes, path: Path, schema: SchemaConfig, model_name: str, version: str, start: datetime,
                end: datetime, classes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    typed = [pa.field(c.name, pa.float64() if c.is_numeric else pa.string()) for c in schema.features
             if c.is_numeric or c.dtype == "datetime"]
    # The classes' probabilities typed up front: inferred, a block of rows without any would not match the next.
    probabilities = [(PROBABILITIES, pa.struct([pa.field(str(c), pa.float64()) for c in classes]))] if classes else []
    explicit = pa.schema([("request_id", pa.string()), ("row", pa.int64()), ("timestamp", pa.string()),
                          ("model_name", pa.string()), ("model_version", pa.string()),
                          ("inputs", pa.struct(typed))]
                         + ([(PREDICTION, pa.float64())] if schema.task == "regression" else []) + probabilities)
    try:
        table = pj.read_json(pa.BufferReader(data),
                             parse_options=pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer"))
        stamps = pc.cast(table["timestamp"], pa.timestamp("us", tz="UTC"))
    except OSError as exc:
        raise MonitoringError(f"capture file {path} is not valid capture JSON lines: {exc}") from exc
    keep = pc.and_(pc.and_(pc.equal(table["model_name"], model_name), pc.equal(table["model_version"], version)),
                   pc.and_(pc.greater_equal(stamps, pa.scalar(start, pa.timestamp("us", tz="UTC"))),
                           pc.less(stamps, pa.scalar(end, pa.timestamp("us", tz="UTC")))))
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", stamps).filter(keep)
    n = table.num_rows

    def fields(column: str) -> Any:
        if not n or column not in table.column_names:
            return None
        return table[column].combine_chunks()

    data: dict[str, Any] = {key: table[key].to_numpy(zero_copy_only=False) for key in (*KEYS, "timestamp")}
    key, inputs = fields("key"), fields("inputs")
    for column in schema.ids:
        present = key is not None and key.type.get_field_index(column.name) >= 0
        data[column.name] = key_text(key.field(column.name).to_pandas() if present else pd.Series([None] * n))
    for column in schema.features:
        present = inputs is not None and inputs.type.get_field_index(column.name) >= 0
        data[column.name] = _feature(column, inputs.field(column.name).to_pandas() if present
                                     else pd.Series([None] * n, dtype=object))
    data[PREDICTION] = table[PREDICTION].to_pandas() if PREDICTION in table.column_names else None
    if schema.task == "classification" and data[PREDICTION] is not None:
        data[PREDICTION] = _labels(data[PREDICTION])
    frame = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in data.items()})
    if not classes:
        return frame, None
    if not n:
        return frame, pd.DataFrame({str(c): np.empty(0) for c in classes})
    # flatten() applies the struct's own nulls (a row captured without probabilities) to every class: NaN.
    return frame, pd.DataFrame({str(c): f.to_numpy(zero_copy_only=False)
                                for c, f in zip(classes, fields(PROBABILITIES).flatten())})


def _read_lines(data: bytes, path: Path, schema: SchemaConfig, model_name: str, version: str, start: datetime,
                end: datetime, classes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """read_file's frames, from the file parsed line by line with the json module."""
    import io
    import json

    rows = []
    try:
        with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8") as stream:
            for line in stream:
                if line.strip():
                    record = json.loads(line)
                    if record.get("model_name") != model_name or record.get("model_version") != version:
                        continue
                    stamp = pd.Timestamp(record["timestamp"])
                    if start <= stamp < end:
                        rows.append((record, stamp))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MonitoringError(f"capture file {path} is not valid capture JSON lines: {exc}") from exc
    data: dict[str, Any] = {
        "request_id": pd.Series([r["request_id"] for r, _ in rows], dtype=object),
        "row": pd.Series([r["row"] for r, _ in rows], dtype="int64"),
        "timestamp": pd.Series([s for _, s in rows], dtype="datetime64[us, UTC]")}
    for column in schema.ids:
        data[column.name] = key_text(pd.Series([(r.get("key") or {}).get(column.name) for r, _ in rows],
                                               dtype=object))
    for column in schema.features:
        data[column.name] = _feature(column, pd.Series([(r.get("inputs") or {}).get(column.name) for r, _ in rows],
                                                       dtype=object))
    predictions = pd.Series([r.get(PREDICTION) for r, _ in rows], dtype=object)
    data[PREDICTION] = predictions.astype("float64") if schema.task == "regression" else _labels(predictions)
    frame = pd.DataFrame({k: v.to_numpy() for k, v in data.items()})
    if not classes:
        return frame, None
    given = [r.get(PROBABILITIES) or {} for r, _ in rows]
    return frame, pd.DataFrame({str(c): pd.Series([p.get(str(c)) for p in given], dtype=object).astype("float64")
                                for c in classes})


def _feature(column: Any, values: pd.Series) -> pd.Series:
    """A captured input column: numbers as float, a datetime's ISO text as datetime64 (UTC), categories as text."""
    if column.is_numeric:
        return values.astype("float64")
    if column.dtype == "datetime":
        return pd.Series(parse_datetimes(values)[0])  # the server writes ISO 8601, whatever the column's format
    return _labels(values)


def key_text(values: pd.Series) -> pd.Series:
    """Key values as text to join on: 17, 17.0 and "17" are one key (a float column of whole ids, as pandas reads
    an id column with gaps, included); missing stays missing."""
    def text(value: Any) -> Any:
        if value is None or (isinstance(value, float) and value != value):
            return None
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    return values.astype(object).map(text)


def _labels(values: pd.Series) -> pd.Series:
    """Category values as text (JSON may carry 1 or "1"); missing stays missing."""
    return values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))


@contextmanager
def local_files(config: MonitoringSources, model_name: str, dates: list[str]) -> Iterator[list[tuple[Path, str]]]:
    """The complete capture files of these dates (each with the name it has in the capture dir), downloaded to a
    temporary directory first from S3."""
    location = config.capture_dir
    if not location.startswith("s3://"):
        root = Path(location) / model_folder(model_name)
        yield [(p, str(p)) for p in sorted(p for date in dates for p in (root / date).glob(f"*{SUFFIX}")
                                            if p.is_file())]
        return
    import boto3
    import botocore.exceptions

    try:
        s3 = parse_s3_uri(location, prefix=True)
    except ValueError as exc:
        raise MonitoringError(f"monitoring.capture_dir {location!r} is refused: {exc}") from None
    bucket, prefix = s3.bucket, s3.key
    client = boto3.client("s3", endpoint_url=config.s3_endpoint_url)
    with tempfile.TemporaryDirectory(prefix="capture-") as tmp:
        files = []
        try:
            for date in dates:
                listed = f"{prefix.strip('/')}/{model_folder(model_name)}/{date}/".lstrip("/")
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listed):
                    for item in page.get("Contents", []):
                        if item["Key"].endswith(SUFFIX):
                            target = Path(tmp) / f"{len(files)}{SUFFIX}"
                            client.download_file(bucket, item["Key"], str(target))
                            files.append((target, f"s3://{bucket}/{item['Key']}"))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise MonitoringError(f"capture files under {location} could not be read: {exc}") from exc
        yield files
