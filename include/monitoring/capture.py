"""The prediction server's captured rows of a period, read back (the capture contract, docs/monitoring.md).

Files are `<capture dir>/<model>/<YYYY-MM-DD>/<file>.jsonl.gz`, one JSON object per input row; only complete files
(the `.jsonl.gz` suffix, never `.part`) are read. The capture dir is a local directory or `s3://bucket/prefix`
(what EC2 hosts ship to). Each file is parsed by pyarrow's multithreaded JSON reader and filtered to the model
version and the period before anything becomes a pandas object, so memory follows the rows kept.
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

from include.ml.entities import MonitoringSources, SchemaConfig
from include.ml.exceptions import MonitoringError

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


def days(start: datetime, end: datetime) -> list[str]:
    """The UTC dates (folder names) a period touches."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def collect(config: MonitoringSources, schema: SchemaConfig, model_name: str, version: str, start: datetime,
            end: datetime, classes: Sequence[str] = ()) -> Captured:
    """The rows captured for `model_name` `version` with start <= timestamp < end (aware datetimes, UTC); with the
    model's `classes` (as text), their captured probabilities too."""
    frames, probabilities, count = [], [], 0
    with _local_files(config, model_name, days(start, end)) as files:
        for path in files:
            frame, proba = read_file(path, schema, model_name, version, start, end, classes)
            frames.append(frame)
            probabilities.append(proba)
            count += 1
    columns = [*KEYS, "timestamp", *(c.name for c in schema.features), PREDICTION]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    proba = None
    if classes:
        proba = pd.concat(probabilities, ignore_index=True) if frames else pd.DataFrame(columns=list(classes),
                                                                                       dtype="float64")
    log.info("capture: %d rows of %s v%s from %d file(s) in %s, %s to %s", len(frame), model_name, version, count,
             config.capture_dir, start.isoformat(), end.isoformat())
    return Captured(frame, count, proba)


def read_file(path: Path, schema: SchemaConfig, model_name: str, version: str, start: datetime, end: datetime,
              classes: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One capture file's rows of the model version and period, one column per feature; and with `classes`, each
    class's probability (None without)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    numeric = [pa.field(c.name, pa.float64()) for c in schema.features if c.is_numeric]
    # The classes' probabilities typed up front: inferred, a block of rows without any would not match the next.
    probabilities = [(PROBABILITIES, pa.struct([pa.field(str(c), pa.float64()) for c in classes]))] if classes else []
    explicit = pa.schema([("request_id", pa.string()), ("row", pa.int64()), ("timestamp", pa.string()),
                          ("model_name", pa.string()), ("model_version", pa.string()),
                          ("inputs", pa.struct(numeric))]
                         + ([(PREDICTION, pa.float64())] if schema.task == "regression" else []) + probabilities)
    try:
        table = pj.read_json(pa.input_stream(str(path), compression="gzip"),
                             parse_options=pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer"))
        stamps = pc.cast(table["timestamp"], pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, OSError) as exc:
        raise MonitoringError(f"capture file {path} is not valid capture JSON lines: {exc}") from exc
    keep = pc.and_(pc.and_(pc.equal(table["model_name"], model_name), pc.equal(table["model_version"], version)),
                   pc.and_(pc.greater_equal(stamps, pa.scalar(start, pa.timestamp("us", tz="UTC"))),
                           pc.less(stamps, pa.scalar(end, pa.timestamp("us", tz="UTC")))))
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", stamps).filter(keep)
    inputs = table["inputs"].combine_chunks() if table.num_rows else None
    data: dict[str, Any] = {key: table[key].to_numpy(zero_copy_only=False) for key in (*KEYS, "timestamp")}
    for column in schema.features:
        present = inputs is not None and inputs.type.get_field_index(column.name) >= 0
        values = inputs.field(column.name).to_pandas() if present else pd.Series([None] * table.num_rows)
        data[column.name] = values.astype("float64") if column.is_numeric else _labels(values)
    data[PREDICTION] = table[PREDICTION].to_pandas() if PREDICTION in table.column_names else None
    if schema.task == "classification" and data[PREDICTION] is not None:
        data[PREDICTION] = _labels(data[PREDICTION])
    frame = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in data.items()})
    if not classes:
        return frame, None
    if not table.num_rows:
        return frame, pd.DataFrame({str(c): np.empty(0) for c in classes})
    # flatten() applies the struct's own nulls (a row captured without probabilities) to every class: NaN.
    fields = table[PROBABILITIES].combine_chunks().flatten()
    return frame, pd.DataFrame({str(c): f.to_numpy(zero_copy_only=False) for c, f in zip(classes, fields)})


def _labels(values: pd.Series) -> pd.Series:
    """Category values as text (JSON may carry 1 or "1"); missing stays missing."""
    return values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))


@contextmanager
def _local_files(config: MonitoringSources, model_name: str, dates: list[str]) -> Iterator[list[Path]]:
    """The complete capture files of these dates, downloaded to a temporary directory first from S3."""
    location = config.capture_dir
    if not location.startswith("s3://"):
        root = Path(location) / model_name
        yield sorted(p for date in dates for p in (root / date).glob(f"*{SUFFIX}") if p.is_file())
        return
    import boto3
    import botocore.exceptions

    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=config.s3_endpoint_url)
    with tempfile.TemporaryDirectory(prefix="capture-") as tmp:
        files = []
        try:
            for date in dates:
                listed = f"{prefix.strip('/')}/{model_name}/{date}/".lstrip("/")
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listed):
                    for item in page.get("Contents", []):
                        if item["Key"].endswith(SUFFIX):
                            target = Path(tmp) / f"{len(files)}{SUFFIX}"
                            client.download_file(bucket, item["Key"], str(target))
                            files.append(target)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise MonitoringError(f"capture files under {location} could not be read: {exc}") from exc
        yield files
