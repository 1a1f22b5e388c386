"""Batch prediction's outputs (include/release/batch.py, include/release/partitions.py): a writer appending scored
frames to a CSV or Parquet file, and temporary files that become their targets (local files renamed into place, or
s3 objects uploaded) only once complete, side files before the output."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from include.ml.config_file import DataSourceConfig
from include.ml.exceptions import BatchPredictionError
from serving.s3_uri import parse_s3_uri

log = logging.getLogger(__name__)


@contextmanager
def writer(path: Path, suffix: str, source: DataSourceConfig) -> Iterator[Callable[[pd.DataFrame], None]]:
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
def staged_outputs(uris: list[str], source: DataSourceConfig) -> Iterator[list[Path]]:
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
