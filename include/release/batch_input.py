"""Batch prediction's inputs (include/release/batch.py, include/release/partitions.py): a file read in chunks of
`batch.chunk_rows` rows, whole or one partition of it.

- CSV (the configured separator): a local file is streamed; a partition of it is a byte range aligned to line starts,
  read with the file's header line put in front. Anything else (a URL, an s3 object, a zip) is read whole by the
  ingestion stage's reader, within its caps.
- Parquet (a name ending in .parquet): read by row groups, with pyarrow; a partition is a run of row groups. A remote
  one is downloaded whole within data_source.max_bytes first.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml.components import ingestion
from include.ml.config_file import DataSourceConfig
from include.ml.exceptions import BatchPredictionError

PARQUET = ".parquet"
_BLOCK = 1 << 20  # bytes read at a time from a CSV byte range


def is_parquet(uri: str) -> bool:
    return Path(uri.split("?")[0]).suffix.lower() == PARQUET


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def read_chunks(uri: str, source: DataSourceConfig, chunk_rows: int, byte_range: tuple[int, int] | None = None,
                row_groups: tuple[int, int] | None = None) -> Iterator[pd.DataFrame]:
    """The input in chunks of at most `chunk_rows` rows; with `byte_range` (a local CSV) only the lines starting
    in [start, end), with `row_groups` (Parquet) only row groups [first, last)."""
    path = local_path(uri)
    if is_local(uri) and not path.is_file():
        raise BatchPredictionError(f"input {uri} is not a file")
    if is_parquet(uri):
        yield from _parquet_chunks(uri, source, chunk_rows, row_groups)
        return
    if byte_range is not None:
        handle: Any = io.BufferedReader(_CsvRange(path, *byte_range), _BLOCK)
    elif is_local(uri) and not zipfile.is_zipfile(path):
        handle = path
    else:
        remote = source.model_copy(update={"uri": uri})
        handle = io.BytesIO(ingestion.extract_csv(ingestion.fetch(remote), remote))
    try:
        with pd.read_csv(handle, sep=source.separator, chunksize=chunk_rows) as reader:
            yield from reader
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:  # EmptyDataError is a ValueError
        raise BatchPredictionError(f"input {uri} is not a valid CSV with separator {source.separator!r}: {exc}") \
            from exc


def parquet_file(uri: str, source: DataSourceConfig) -> Any:
    """A pyarrow ParquetFile of a local path, or of a remote file downloaded within data_source's caps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_local(uri):
        target: Any = local_path(uri)
    else:
        target = io.BytesIO(ingestion.fetch(source.model_copy(update={"uri": uri})))
    try:
        return pq.ParquetFile(target)
    except (pa.ArrowException, OSError) as exc:
        raise BatchPredictionError(f"input {uri} is not a valid Parquet file: {exc}") from exc


def header_end(path: Path) -> int:
    """The byte offset just after a CSV file's header line (its size if it has no line end)."""
    with path.open("rb") as file:
        line = file.readline()
    return len(line)


def _parquet_chunks(uri: str, source: DataSourceConfig, chunk_rows: int,
                    row_groups: tuple[int, int] | None) -> Iterator[pd.DataFrame]:
    parquet = parquet_file(uri, source)
    first, last = row_groups or (0, parquet.num_row_groups)
    if first >= last:
        return
    for batch in parquet.iter_batches(batch_size=chunk_rows, row_groups=list(range(first, last))):
        yield batch.to_pandas()


class _CsvRange(io.RawIOBase):
    """A CSV file's header line followed by its bytes [start, end): a partition that reads as a CSV file."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        super().__init__()
        self._file = path.open("rb")
        self._header = self._file.readline()
        self._file.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._header:
            n = min(len(view), len(self._header))
            view[:n] = self._header[:n]
            self._header = self._header[n:]
            return n
        if self._left <= 0:
            return 0
        data = self._file.read(min(len(view), self._left))
        self._left -= len(data)
        view[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()
