"""Ingestion: fetch the source afresh, check it parses, snapshot it with its sha256."""

from __future__ import annotations

import hashlib
import io
import logging
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml import artifacts
from include.ml.entities import DataSourceConfig, IngestionConfig
from include.ml.exceptions import IngestionError

log = logging.getLogger(__name__)

SNAPSHOT = "data.csv"
PARSED = "data.parquet"
RESULT = "result.json"


@dataclass(frozen=True)
class IngestionResult:
    source_uri: str
    snapshot_path: str
    data_path: str
    rows: int
    columns: int
    sha256: str
    bytes: int
    fetched_at: str

    def summary(self) -> str:
        return (f"{self.rows} rows x {self.columns} columns from {self.source_uri} "
                f"({self.bytes} bytes, sha256 {self.sha256[:12]})")

    def xcom(self) -> dict[str, Any]:
        return {"source_uri": self.source_uri, "data_path": self.data_path, "rows": self.rows,
                "columns": self.columns, "sha256": self.sha256}


def fetch(source: DataSourceConfig) -> bytes:
    """Read the raw bytes of the source. Never served from a cache."""
    uri = source.uri
    try:
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(uri, timeout=source.timeout_seconds) as response:
                return response.read()
        if uri.startswith("s3://"):
            return _fetch_s3(source)
        if "://" in uri and not uri.startswith("file://"):
            raise IngestionError(f"unsupported source {uri!r}: use a local path, http(s):// or s3://")
        return Path(uri.removeprefix("file://")).read_bytes()
    except IngestionError:
        raise
    except urllib.error.HTTPError as exc:
        raise IngestionError(f"source {uri} answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise IngestionError(f"source {uri} is unreachable: {reason}") from exc


def _fetch_s3(source: DataSourceConfig) -> bytes:
    import boto3
    import botocore.exceptions

    bucket, _, key = source.uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise IngestionError(f"source {source.uri!r} is not of the form s3://bucket/key")
    client = boto3.client("s3", endpoint_url=source.s3_endpoint_url, config=botocore.config.Config(
        connect_timeout=source.timeout_seconds, read_timeout=source.timeout_seconds,
        retries={"max_attempts": 2}))
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise IngestionError(f"source {source.uri} is unreachable: {exc}") from exc


def extract_csv(raw: bytes, source: DataSourceConfig) -> bytes:
    """Return the CSV bytes, unpacking a zip archive if the source is one."""
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        return raw
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if source.zip_member:
            if source.zip_member not in names:
                raise IngestionError(f"zip archive {source.uri} has no member {source.zip_member!r}; it holds {names}")
            return archive.read(source.zip_member)
        csvs = [n for n in names if n.lower().endswith(".csv")]
        if len(csvs) != 1:
            raise IngestionError(f"zip archive {source.uri} holds {len(csvs)} CSV files {csvs}; "
                                 "set data_source.zip_member to pick one")
        return archive.read(csvs[0])


def parse_csv(data: bytes, config: IngestionConfig) -> pd.DataFrame:
    """Parse the CSV, failing clearly on empty files and wrong separators."""
    source = config.source
    if not data.strip():
        raise IngestionError(f"source {source.uri} is empty")
    try:
        frame = pd.read_csv(io.BytesIO(data), sep=source.separator)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise IngestionError(f"source {source.uri} is not a valid CSV with separator "
                             f"{source.separator!r}: {exc}") from exc
    if frame.shape[1] == 1 and len(config.expected_columns) > 1:
        raise IngestionError(
            f"source {source.uri} parsed into a single column {frame.columns[0][:60]!r} with separator "
            f"{source.separator!r}; the schema expects {len(config.expected_columns)} columns. "
            "Check data_source.separator in config.yaml")
    if frame.empty:
        raise IngestionError(f"source {source.uri} has a header but no data rows")
    return frame


def ingest(config: IngestionConfig, output_dir: Path) -> IngestionResult:
    raw = fetch(config.source)
    data = extract_csv(raw, config.source)
    frame = parse_csv(data, config)
    artifacts.write_bytes(output_dir / SNAPSHOT, data)
    with artifacts.atomic_path(output_dir / PARSED) as tmp:
        frame.to_parquet(tmp, index=False)
    result = IngestionResult(
        source_uri=config.source.uri, snapshot_path=str(output_dir / SNAPSHOT), data_path=str(output_dir / PARSED),
        rows=len(frame), columns=frame.shape[1], sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("ingest: %s", result.summary())
    return result
