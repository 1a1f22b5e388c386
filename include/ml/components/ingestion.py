"""Ingestion: fetch the source afresh (within its size caps), check it parses, snapshot it with its sha256."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import logging
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import pandas as pd

from include.ml import artifacts
from include.ml.config_file import DataSourceConfig
from include.ml.entities import IngestionConfig
from include.ml.exceptions import IngestionError, SourceTooLargeError
from include.ml.schema_file import SchemaConfig
from serving.s3_uri import parse_s3_uri

log = logging.getLogger(__name__)

SNAPSHOT = "data.csv"
PARSED = "data.parquet"
RESULT = "result.json"
CHUNK = 1 << 20  # bytes per read of a source or zip member


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
    rows_without_target: int = 0  # dropped (schema.yaml target.missing: drop); `rows` counts the rest
    ignored_columns: list[str] = field(default_factory=list)  # not in schema.yaml, dropped (columns_not_in_schema)

    def summary(self) -> str:
        dropped = [f"{self.rows_without_target} rows without a target dropped"] if self.rows_without_target else []
        if self.ignored_columns:
            dropped.append(f"{len(self.ignored_columns)} columns not in the schema ignored: "
                           f"{', '.join(self.ignored_columns[:10])}{' ...' if len(self.ignored_columns) > 10 else ''}")
        return (f"{self.rows} rows x {self.columns} columns from {self.source_uri} "
                f"({self.bytes} bytes, sha256 {self.sha256[:12]})" + "".join(f"; {d}" for d in dropped))

    def xcom(self) -> dict[str, Any]:
        return {"source_uri": self.source_uri, "data_path": self.data_path, "rows": self.rows,
                "columns": self.columns, "sha256": self.sha256, "rows_without_target": self.rows_without_target,
                "ignored_columns": self.ignored_columns}


def fetch(source: DataSourceConfig) -> bytes:
    """Read the raw bytes of the source, never more than data_source.max_bytes. Never served from a cache."""
    uri = source.uri
    try:
        if uri.startswith(("http://", "https://")):
            return _fetch_http(source)
        if uri.startswith("s3://"):
            return _fetch_s3(source)
        if "://" in uri and not uri.startswith("file://"):
            raise IngestionError(f"unsupported source {uri!r}: use a local path, http(s):// or s3://")
        return _fetch_local(source)
    except IngestionError:
        raise
    except urllib.error.HTTPError as exc:
        raise IngestionError(f"source {uri} answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise IngestionError(f"source {uri} is unreachable: {reason}") from exc


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _read_capped(stream: _Readable, limit: int, refusal: Callable[[], IngestionError]) -> bytes:
    """Read to the end, but never more than `limit` bytes: one byte more is refused, whatever a size header said."""
    chunks, total = [], 0
    while chunk := stream.read(min(CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise refusal()
    return b"".join(chunks)


def _too_large(source: DataSourceConfig, found: str) -> SourceTooLargeError:
    return SourceTooLargeError(source.uri, "max_bytes", source.max_bytes, found)


def _fetch_local(source: DataSourceConfig) -> bytes:
    path = Path(source.uri.removeprefix("file://"))
    info = path.stat()  # before opening: a FIFO would block, /dev/zero never ends
    if not stat.S_ISREG(info.st_mode):
        raise IngestionError(f"source {source.uri} is not a regular file")
    if info.st_size > source.max_bytes:
        raise _too_large(source, f"the file is {info.st_size:,} bytes")
    with path.open("rb") as file:  # capped as well: the file may grow after the stat
        return _read_capped(file, source.max_bytes, lambda: _too_large(source, "the file grew while read"))


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects go to http(s) only, and stay inside data_source.allowed_sources when that is set: an allowed
    host's open redirect must not reach what the list keeps out."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        try:
            reason = "it is not http(s)" if not newurl.startswith(("http://", "https://")) else \
                refused_source(newurl, self.allowed) if self.allowed else None
        except ValueError as exc:  # an entry of the list that cannot be compared
            reason = str(exc)
        if reason:
            fp.close()
            raise IngestionError(f"source {req.full_url} redirects to {newurl}, which is refused: {reason}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_http(source: DataSourceConfig) -> bytes:
    opener = urllib.request.build_opener(_CheckedRedirects(source.allowed_sources))
    with opener.open(source.uri, timeout=source.timeout_seconds) as response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > source.max_bytes:  # refused unread; a lie is caught while reading
            raise _too_large(source, f"its Content-Length is {int(declared):,} bytes")
        return _read_capped(response, source.max_bytes,
                            lambda: _too_large(source, f"more than {source.max_bytes:,} bytes arrived"))


def _fetch_s3(source: DataSourceConfig) -> bytes:
    import boto3
    import botocore.exceptions

    try:
        s3 = parse_s3_uri(source.uri)
    except ValueError as exc:
        raise IngestionError(f"source {source.uri!r} is refused: {exc}") from None
    client = boto3.client("s3", endpoint_url=source.s3_endpoint_url, config=botocore.config.Config(
        connect_timeout=source.timeout_seconds, read_timeout=source.timeout_seconds,
        retries={"max_attempts": 2}))
    try:
        response = client.get_object(Bucket=s3.bucket, Key=s3.key)
        with contextlib.closing(response["Body"]) as body:
            size = response.get("ContentLength")
            if size is not None and size > source.max_bytes:
                raise _too_large(source, f"the object is {size:,} bytes")
            return _read_capped(body, source.max_bytes,
                                lambda: _too_large(source, f"more than {source.max_bytes:,} bytes arrived"))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise IngestionError(f"source {source.uri} is unreachable: {exc}") from exc


def extract_csv(raw: bytes, source: DataSourceConfig) -> bytes:
    """Return the CSV bytes, unpacking a zip archive if the source is one (within the zip-bomb caps)."""
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        return raw
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            return _unpack(archive, archive.getinfo(_member_name(archive, source)), len(raw), source)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # e.g. "Bad CRC-32": zipfile stops at the size the headers declare, so a lie about it ends here
        raise IngestionError(f"zip archive {source.uri} is corrupt or unsupported: {exc}") from exc


def _member_name(archive: zipfile.ZipFile, source: DataSourceConfig) -> str:
    names = [n for n in archive.namelist() if not n.endswith("/")]
    if source.zip_member:
        if source.zip_member not in names:
            raise IngestionError(f"zip archive {source.uri} has no member {source.zip_member!r}; it holds {names}")
        return source.zip_member
    csvs = [n for n in names if n.lower().endswith(".csv")]
    if len(csvs) != 1:
        raise IngestionError(f"zip archive {source.uri} holds {len(csvs)} CSV files {csvs}; "
                             "set data_source.zip_member to pick one")
    return csvs[0]


def _unpack(archive: zipfile.ZipFile, member: zipfile.ZipInfo, archive_bytes: int,
            source: DataSourceConfig) -> bytes:
    """The member, refused as a zip bomb from its headers first, then again while decompressing. Headers can lie,
    but its compressed data cannot be larger than the whole archive, so that is the ratio's denominator."""
    compressed = max(1, min(member.compress_size, archive_bytes))
    ratio = member.file_size / compressed
    if member.file_size > source.max_uncompressed_bytes:
        raise SourceTooLargeError(source.uri, "max_uncompressed_bytes", source.max_uncompressed_bytes,
                                  f"zip member {member.filename} declares {member.file_size:,} bytes uncompressed")
    if ratio > source.max_compression_ratio:
        raise SourceTooLargeError(source.uri, "max_compression_ratio", source.max_compression_ratio,
                                  f"zip member {member.filename} declares a compression ratio of {ratio:,.0f}")
    by_ratio = int(source.max_compression_ratio * compressed)
    setting, limit = ("max_compression_ratio", by_ratio) if by_ratio < source.max_uncompressed_bytes else \
        ("max_uncompressed_bytes", source.max_uncompressed_bytes)
    with archive.open(member) as stream:
        return _read_capped(stream, limit, lambda: SourceTooLargeError(
            source.uri, setting, getattr(source, setting),
            f"zip member {member.filename} expands past {limit:,} bytes from {compressed:,} compressed"))


# --- which sources a run may ask for ---------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Location:
    """A source normalised for comparison: local paths resolved, URLs split into origin and decoded segments."""

    origin: tuple[str, str, int | None]  # scheme, host, port; ("file", "", None) for a local path
    segments: tuple[str, ...]
    query: str
    folder: bool  # as an allow-list entry: admits everything under it


def _location(uri: str, root: Path | None) -> _Location:
    """Raises ValueError naming what makes `uri` unusable for a prefix check."""
    if any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise ValueError("it holds whitespace or control characters")
    if uri.startswith("s3://"):  # the key exactly as S3 gets it (serving/s3_uri.py)
        s3 = parse_s3_uri(uri, prefix=True)
        return _Location(("s3", s3.bucket, None), s3.segments, "", s3.is_prefix)
    if "://" not in uri or uri.startswith("file://"):  # as fetch reads it
        local = Path(uri.removeprefix("file://")).expanduser()
        if uri.startswith("file://") and not local.is_absolute():
            raise ValueError("a file:// URI must hold an absolute path")
        resolved = (root / local if root and not local.is_absolute() else local).resolve()  # "..", symlinks
        return _Location(("file", "", None), resolved.parts, "", uri.endswith("/") or resolved.is_dir())
    parts = urllib.parse.urlsplit(uri)
    if "@" in parts.netloc:  # http://allowed.host@evil/ is evil's
        raise ValueError("it holds credentials (user@host)")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        raise ValueError("its port is not a number in range") from None
    if not parts.hostname:
        raise ValueError("it has no host")
    path = urllib.parse.unquote(parts.path)  # %2e%2e is ".." to a server
    segments = tuple(path.removeprefix("/").split("/"))
    if "\\" in path or {".", ".."} & set(segments):  # refused, not resolved: S3 keys take them literally
        raise ValueError("it holds a '.' or '..' path segment (or a backslash)")
    folder = parts.path in ("", "/") or parts.path.endswith("/")
    return _Location((parts.scheme, parts.hostname, port), segments[:-1] if folder else segments, parts.query,
                     folder)


def refused_source(uri: str, allowed: Sequence[str], root: Path | None = None) -> str | None:
    """Why `uri` lies under none of the `allowed` sources, or None when it lies under one.

    Compared normalised: scheme, host and port exactly (default ports filled in), the decoded path by whole
    segments (s3://b/wine/ does not admit s3://b/wine-private/...); local paths resolved, relative ones against
    `root`. An s3:// key is compared as it is, since S3 decodes nothing: a '%', '.', '..' or empty segment in it
    is refused (serving/s3_uri.py), and the reads and writes use the same key.
    Raises ValueError for an entry of `allowed` that cannot be compared.
    """
    entries = []
    for entry in allowed:
        try:
            entries.append(_location(entry, root))
        except ValueError as exc:
            raise ValueError(f"allowed source {entry!r}: {exc}") from None
    try:
        candidate = _location(uri, root)
    except ValueError as exc:
        return str(exc)
    for entry in entries:
        if candidate.origin == entry.origin and (
                candidate.segments[:len(entry.segments)] == entry.segments if entry.folder
                else (candidate.segments, candidate.query) == (entry.segments, entry.query)):
            return None
    return "it is not under any allowed source"


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


def select_rows_and_columns(frame: pd.DataFrame, schema: SchemaConfig) -> tuple[pd.DataFrame, int, list[str]]:
    """The frame the later stages see: without the columns schema.yaml does not list (columns_not_in_schema: ignore)
    and the rows without a target (target.missing: drop); also how many rows and which columns went."""
    ignored = [str(c) for c in frame.columns if c not in {col.name for col in schema.columns}] \
        if schema.columns_not_in_schema == "ignore" else []
    frame = frame.drop(columns=ignored)
    without = 0
    if schema.target_missing == "drop" and schema.target in frame:
        missing = frame[schema.target].isna()
        without = int(missing.sum())
        if without:
            frame = frame[~missing].reset_index(drop=True)
            target = frame[schema.target]
            spec = next(c for c in schema.columns if c.name == schema.target)
            # read as float because of the gaps: an int target is whole numbers again once they are gone
            if spec.dtype == "int" and pd.api.types.is_float_dtype(target) and (target == target.round()).all():
                frame[schema.target] = target.astype("int64")
    return frame, without, ignored


def ingest(config: IngestionConfig, output_dir: Path) -> IngestionResult:
    raw = fetch(config.source)
    data = extract_csv(raw, config.source)
    frame = parse_csv(data, config)
    without, ignored = 0, []
    if config.schema is not None:
        frame, without, ignored = select_rows_and_columns(frame, config.schema)
        if frame.empty:
            raise IngestionError(f"source {config.source.uri} has no row with a value of the target "
                                 f"{config.schema.target!r}")
    artifacts.write_bytes(output_dir / SNAPSHOT, data)
    with artifacts.atomic_path(output_dir / PARSED) as tmp:
        frame.to_parquet(tmp, index=False)
    result = IngestionResult(
        source_uri=config.source.uri, snapshot_path=str(output_dir / SNAPSHOT), data_path=str(output_dir / PARSED),
        rows=len(frame), columns=frame.shape[1], sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), rows_without_target=without,
        ignored_columns=ignored)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("ingest: %s", result.summary())
    return result
