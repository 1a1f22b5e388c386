"""Partitioned batch prediction, step 1: plan the partitions of an input (include/release/partition_runs.py scores
and combines them).

An input splits where it can be read from the middle without reading what comes before:

- a local CSV file: byte ranges aligned to line starts, the header read once from the top and put in front of each
  range. A quoted field may hold a line break, and a range starting inside one would split a row wrongly: the plan
  looks for a line holding an odd number of quote characters (a quoted field open at its end) and, if one does, does
  not split the file (one partition, the reason in the plan).
- a Parquet file (local, or remote read whole): runs of consecutive row groups. A file of one row group is one
  partition.
- an s3:// prefix (ending in "/"): one partition per .csv or .parquet object under it, in key order: the input is
  their rows in that order, each object with its own header.
- anything else (an http(s) URL, one s3 object, a zip): one partition.

How many: `batch.partition_mb` (MiB of input per partition) when set, else `batch.partitions` (a run may override
it). The plan also exports the version to score with into the model store once, so that every partition scores the
same version even if its alias moves meanwhile, and no two partitions export it at once. An output ending in "/" is
a Parquet dataset directory, a file per partition (include/release/parquet_dataset.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from include.ml import tracking
from include.ml.config_file import DataSourceConfig
from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError
from include.release import parquet_dataset
from include.release.batch import ON_BAD_ROWS, REJECTED_SUFFIX, output_format
from include.release.batch_input import header_end, is_local, is_parquet, local_path, parquet_file
from include.release.export import export_to_store
from serving.s3_uri import parse_s3_uri

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"  # beside the output: each partition's input range and row counts
MAX_PARTITIONS = 256
_SCAN_BLOCK = 8 << 20  # bytes read at a time when looking for quoted line breaks


@dataclass(frozen=True)
class Partition:
    """One piece of the input: `kind` says what start and end count (bytes of a CSV file, row groups of a Parquet
    file; an `object` or the `whole` input has none)."""

    index: int
    uri: str
    kind: str  # csv_bytes | parquet_row_groups | object | whole
    start: int = 0
    end: int = 0

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Partition:
        return cls(**data)


@dataclass(frozen=True)
class BatchPlan:
    """What every task of a partitioned run needs: the input's partitions, where their parts go (`staging`, a local
    folder every worker can write), the output, and the version (a number, exported already)."""

    input_uri: str
    output_uri: str
    model_name: str
    version: str
    on_bad_rows: str
    explain: bool
    staging: str
    partitions: tuple[Partition, ...] = field(default_factory=tuple)
    note: str = ""  # why the input was not split as asked, if it was not

    @property
    def rejected_uri(self) -> str | None:
        if self.on_bad_rows == "fail":
            return None
        return parquet_dataset.rejected_uri(self.output_uri) if self.dataset else self.output_uri + REJECTED_SUFFIX

    @property
    def manifest_uri(self) -> str:
        return parquet_dataset.manifest_uri(self.output_uri) if self.dataset else self.output_uri + MANIFEST_SUFFIX

    @property
    def dataset(self) -> bool:
        """The output is a Parquet dataset directory (it ends in "/": include/release/parquet_dataset.py)."""
        return parquet_dataset.is_dataset(self.output_uri)

    def summary(self) -> str:
        text = (f"{self.input_uri} in {len(self.partitions)} partition(s), scored with {self.model_name} version "
                f"{self.version}, parts in {self.staging}")
        return f"{text} ({self.note})" if self.note else text

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "partitions": [p.describe() for p in self.partitions]}

    def xcom(self) -> dict[str, Any]:
        """Two XComs (the task has multiple_outputs): the plan, and the partitions a mapped task expands over."""
        return {"plan": self.describe(), "partitions": [p.describe() for p in self.partitions]}

    @classmethod
    def of(cls, data: dict[str, Any]) -> BatchPlan:
        return cls(**{**data, "partitions": tuple(Partition.of(p) for p in data["partitions"])})


def plan_partitions(config: BatchPredictionConfig, input_uri: str, output_uri: str, staging: Path,
                    version: str = "champion", on_bad_rows: str | None = None, explain: bool = False,
                    partitions: int | None = None) -> BatchPlan:
    """The plan of scoring `input_uri` into `output_uri` in partitions (`partitions`: the target count; None:
    batch.partition_mb or batch.partitions), their parts written under `staging`.

    Raises BatchPredictionError (a bad mode or output, an input that is not there, an empty s3 prefix) or
    DeploymentError (the version cannot be exported)."""
    mode = on_bad_rows or config.batch.on_bad_rows
    if mode not in ON_BAD_ROWS:
        raise BatchPredictionError(f"on_bad_rows must be one of {', '.join(ON_BAD_ROWS)}, got {mode!r}")
    if parquet_dataset.is_dataset(output_uri):
        parquet_dataset.dataset_target(output_uri)
    else:
        output_format(output_uri)
    pieces, note = _split(input_uri, config.source, config.batch, partitions)
    tracking.configure(config.mlflow)
    exported = export_to_store(config.mlflow.registered_model_name, version, config.model_store, config.signing)
    plan = BatchPlan(input_uri, output_uri, exported.model_name, exported.version, mode, explain, str(staging),
                     tuple(pieces), note)
    log.info("predict: plan: %s", plan.summary())
    return plan


def _split(uri: str, source: DataSourceConfig, batch: Any, wanted: int | None) -> tuple[list[Partition], str]:
    if uri.startswith("s3://") and uri.endswith("/"):
        return _objects(uri, source), ""
    if is_parquet(uri):
        parquet = parquet_file(uri, source)
        size = local_path(uri).stat().st_size if is_local(uri) else \
            sum(parquet.metadata.row_group(i).total_byte_size for i in range(parquet.metadata.num_row_groups))
        return _row_groups(uri, parquet.metadata, _count(batch, wanted, size)), ""
    path = local_path(uri)
    if not is_local(uri) or not path.is_file() or _is_zip(path):
        if is_local(uri) and not path.is_file():
            raise BatchPredictionError(f"input {uri} is not a file")
        return [Partition(0, uri, "whole")], ""
    count = _count(batch, wanted, path.stat().st_size)
    if count > 1 and (line := open_quote_line(path)) is not None:
        return [Partition(0, uri, "whole")], (f"not split: line {line} ends inside a quoted field (a line break in a "
                                              "value), and a byte range could start inside it")
    return _byte_ranges(uri, path, count), ""


def _count(batch: Any, wanted: int | None, size: int) -> int:
    if wanted is None and batch.partition_mb:
        wanted = math.ceil(size / (batch.partition_mb * 2**20))
    return max(1, min(wanted or batch.partitions, MAX_PARTITIONS))


def _is_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _byte_ranges(uri: str, path: Path, count: int) -> list[Partition]:
    """`count` ranges of about equal size after the header, each moved to start just after a line break."""
    first, size = header_end(path), path.stat().st_size
    bounds = [first]
    with path.open("rb") as file:
        for i in range(1, count):
            at = max(first + (size - first) * i // count, bounds[-1])
            file.seek(max(at - 1, 0))  # a range starting just after a line break keeps its place
            file.readline()
            bounds.append(max(min(file.tell(), size), bounds[-1]))
    bounds.append(size)
    spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(first, size)]
    return [Partition(i, uri, "csv_bytes", a, b) for i, (a, b) in enumerate(spans)]


def open_quote_line(path: Path, quote: bytes = b'"') -> int | None:
    """The 1-based number of the first line of a CSV file ending inside a quoted field (an odd number of quote
    characters so far on its record: a doubled quote inside a field counts two), or None: no record spans lines."""
    line, open_field, tail = 0, False, b""
    with path.open("rb") as file:
        while block := file.read(_SCAN_BLOCK):
            block, tail = tail + block, b""
            if quote not in block and not open_field:
                line += block.count(b"\n")
                continue
            *lines, tail = block.split(b"\n")
            for text in lines:
                line += 1
                open_field ^= text.count(quote) % 2 == 1
                if open_field:
                    return line
    return None


def _row_groups(uri: str, metadata: Any, count: int) -> list[Partition]:
    """`count` runs of consecutive row groups with about equal rows (at most one per row group)."""
    groups = metadata.num_row_groups
    if groups == 0:
        return [Partition(0, uri, "parquet_row_groups", 0, 0)]
    rows = [metadata.row_group(i).num_rows for i in range(groups)]
    total, count = sum(rows), min(count, groups)
    bounds, seen = [0], 0
    for i, n in enumerate(rows[:-1]):
        seen += n
        if seen >= total * len(bounds) / count and len(bounds) < count:
            bounds.append(i + 1)
    bounds.append(groups)
    return [Partition(i, uri, "parquet_row_groups", a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def _objects(prefix: str, source: DataSourceConfig) -> list[Partition]:
    """One partition per .csv or .parquet object under an s3:// prefix, in key order."""
    import boto3
    import botocore.exceptions

    try:
        where = parse_s3_uri(prefix, prefix=True)
    except ValueError as exc:
        raise BatchPredictionError(f"input {prefix!r} is refused: {exc}") from None
    keys: list[str] = []
    try:
        pages = boto3.client("s3", endpoint_url=source.s3_endpoint_url).get_paginator("list_objects_v2") \
            .paginate(Bucket=where.bucket, Prefix=where.key)
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", []) if o["Size"] > 0
                     and o["Key"].lower().endswith((".csv", ".parquet"))]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise BatchPredictionError(f"input {prefix}: cannot list the objects under it: {exc}") from exc
    if not keys:
        raise BatchPredictionError(f"input {prefix} holds no .csv or .parquet object")
    return [Partition(i, f"s3://{where.bucket}/{key}", "object") for i, key in enumerate(sorted(keys))]
