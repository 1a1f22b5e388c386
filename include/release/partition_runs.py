"""Partitioned batch prediction, steps 2 and 3: score one partition of a plan (include/release/partitions.py) into a
part of the run's staging folder, then combine the parts into the output.

Scoring a partition is scoring a file (include/release/batch.py: the same checks, model, chunks of batch.chunk_rows
and predict calls bounded by batch.encoded_mb), into `part-NNNNN.parquet` (and with skip or flag
`part-NNNNN.rejected.csv`). Each is written to a temporary name and renamed into place, and `part-NNNNN.json`, the
partition's row counts, is renamed into place last: it is what says the partition is done. A retry of a partition
whose try was killed finds no `.json`, scores it again and replaces whatever the killed try renamed; its temporary
files are never read. A retry of a partition that is done returns its counts without scoring.

Combining reads the parts in partition order, one row group (a chunk) at a time, into one CSV or Parquet output,
published as a single-process run publishes it (include/release/batch_output.py): the rejected side file and
`<output>.manifest.json` (each partition's input range, rows in, rows out, bad rows) first, the output last. Row
numbers are the partition's own until then: where the row key is the row number (no id column), and in the side
file's `row` column, each partition's are shifted by the rows of the partitions before it, so the output is the
single-process run's, row for row.

An output ending in "/" is a Parquet dataset directory instead: a `part-NNNNN.parquet` per partition and
`_manifest.json` inside it, renamed into place whole (include/release/parquet_dataset.py).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError, DataValidationError
from include.release.batch import BatchPredictionResult, ScoringRun, load_version, output_columns, output_format
from include.release.batch_checks import report
from include.release.batch_input import read_chunks
from include.release.batch_output import staged_outputs, writer
from include.release.parquet_dataset import publish_dataset
from include.release.partitions import BatchPlan, Partition, plan_partitions
from serving.model import LoadedModel

log = logging.getLogger(__name__)

_LOADED: dict[tuple[str, str, str], LoadedModel] = {}


@dataclass(frozen=True)
class PartResult:
    """A scored partition's counts, as its `part-NNNNN.json` keeps them."""

    index: int
    rows_in: int
    rows_out: int
    rejected: int
    chunks: int
    seconds: float
    numbered: str | None = None  # the key column holding row numbers (shifted when combined); None: keys as read
    columns: list[str] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""
    predict_rows: int = 0
    explained: dict[str, Any] | None = None
    resumed: bool = False  # done by an earlier try: not scored again

    def summary(self) -> str:
        done = "already scored by an earlier try" if self.resumed else f"scored in {self.seconds:.1f}s"
        return (f"partition {self.index}: {self.rows_in:,} rows in, {self.rows_out:,} out, {self.rejected:,} bad, "
                f"{done}")

    def xcom(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("columns", "explained")}


def score_partition(config: BatchPredictionConfig, plan: BatchPlan, partition: Partition) -> PartResult:
    """Score `partition` of `plan` into its part in plan.staging (see the module's doc); its counts.

    Raises what batch.predict_file raises for a file (DataValidationError, BatchPredictionError, ...), naming the
    partition; nothing of a failed try counts."""
    staging = Path(plan.staging)
    staging.mkdir(parents=True, exist_ok=True)
    marker = staging / f"{partition.name}.json"
    if marker.is_file():
        done = PartResult(**{**json.loads(marker.read_text()), "resumed": True})
        log.info("predict: %s", done.summary())
        return done
    started = time.perf_counter()
    run = ScoringRun(config, plan.on_bad_rows, plan.version, plan.explain, _loaded)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    data = staging / f".{partition.name}.parquet.{token}.tmp"
    rejected = staging / f".{partition.name}.rejected.csv.{token}.tmp"
    rows_out = 0
    try:
        data.touch()
        rejected.touch()
        with ExitStack() as writers:
            write = writers.enter_context(writer(data, ".parquet", config.source))
            reject = writers.enter_context(writer(rejected, ".csv", config.source)) if plan.rejected_uri else None
            for chunk in _chunks(config, partition):
                if chunk.empty:
                    continue
                scored, problems = run.chunk(chunk)
                if scored is not None:
                    write(scored)
                    rows_out += len(scored)
                if reject is not None and problems is not None:
                    reject(problems)
        if run.bad:
            raise DataValidationError(report(run.bad, run.rows), None)
        if reject is not None:
            os.replace(rejected, staging / f"{partition.name}.rejected.csv")
        if rows_out:
            os.replace(data, staging / f"{partition.name}.parquet")
        model, layout = run.model, run.layout
        result = PartResult(
            partition.index, run.rows, rows_out, run.rejected, run.chunks, round(time.perf_counter() - started, 2),
            layout.keys[0] if layout is not None and layout.numbered else None,
            output_columns(model, layout.keys, plan.on_bad_rows, run.explainer) if model and layout else [],
            model.name if model else "", model.version if model else "", run.predict_rows,
            run.explainer.describe() if run.explainer else None)
        _write_atomically(marker, json.dumps(asdict(result) | {"resumed": False}))
    except (DataValidationError, BatchPredictionError):
        log.error("predict: partition %d (%s [%d, %d)) failed; row numbers in the message are the partition's",
                  partition.index, partition.uri, partition.start, partition.end)
        raise
    finally:
        data.unlink(missing_ok=True)
        rejected.unlink(missing_ok=True)
    log.info("predict: %s", result.summary())
    return result


def combine(config: BatchPredictionConfig, plan: BatchPlan) -> BatchPredictionResult:
    """The parts of every partition of `plan` as one output (and side file, and manifest), published atomically
    (one file, or for an output ending in "/" a Parquet dataset directory); the staging folder is removed once they
    are. Raises BatchPredictionError if a partition has no part (it was not scored) or the input had no rows."""
    started = time.perf_counter()
    staging = Path(plan.staging)
    parts = [_done(staging, p) for p in plan.partitions]
    rows = sum(p.rows_in for p in parts)
    if not rows:
        raise BatchPredictionError(f"input {plan.input_uri} has a header but no data rows")
    scored = next(p for p in parts if p.model_name)
    if plan.dataset:
        _publish_dataset(config, plan, parts)
    else:
        _publish_file(config, plan, parts)
    shutil.rmtree(staging, ignore_errors=True)
    result = BatchPredictionResult(
        plan.input_uri, plan.output_uri, scored.model_name, scored.model_version, rows,
        sum(p.chunks for p in parts), round(time.perf_counter() - started, 2), scored.columns, plan.on_bad_rows,
        sum(p.rejected for p in parts), plan.rejected_uri, scored.predict_rows, scored.explained,
        partitions=len(parts), manifest_uri=plan.manifest_uri)
    log.info("predict: %s", result.summary())
    return result


def _publish_file(config: BatchPredictionConfig, plan: BatchPlan, parts: list[PartResult]) -> None:
    """The parts as one file (and side file and manifest), published by batch_output.staged_outputs."""
    staging, suffix = Path(plan.staging), output_format(plan.output_uri)
    uris = [plan.output_uri, *([plan.rejected_uri] if plan.rejected_uri else []), plan.manifest_uri]
    with staged_outputs(uris, config.source) as staged:
        with ExitStack() as writers:
            write = writers.enter_context(writer(staged[0], suffix, config.source))
            reject = writers.enter_context(writer(staged[1], ".csv", config.source)) if plan.rejected_uri else None
            offset = 0
            for partition, part in zip(plan.partitions, parts):
                if part.rows_out:
                    for frame in _part_frames(staging / f"{partition.name}.parquet"):
                        write(_shifted(frame, part.numbered and [part.numbered], offset))
                if reject is not None and part.rows_in:
                    for frame in _rejected_frames(staging / f"{partition.name}.rejected.csv", config):
                        reject(_shifted(frame, ["row", *([part.numbered] if part.numbered else [])], offset))
                offset += part.rows_in
        staged[-1].write_text(json.dumps(_manifest(plan, parts), indent=1))


def _publish_dataset(config: BatchPredictionConfig, plan: BatchPlan, parts: list[PartResult]) -> None:
    """The parts as a Parquet dataset directory, a file per partition (include/release/parquet_dataset.py)."""
    staging = Path(plan.staging)
    offsets = np.cumsum([0, *(p.rows_in for p in parts)])[:-1].tolist()

    def files() -> Iterator[tuple[str, Iterator[pd.DataFrame]]]:
        for partition, part, offset in zip(plan.partitions, parts, offsets):
            if part.rows_out:
                yield partition.name, (_shifted(frame, part.numbered and [part.numbered], offset)
                                       for frame in _part_frames(staging / f"{partition.name}.parquet"))

    def rejected() -> Iterator[pd.DataFrame]:
        for partition, part, offset in zip(plan.partitions, parts, offsets):
            if part.rows_in:
                for frame in _rejected_frames(staging / f"{partition.name}.rejected.csv", config):
                    yield _shifted(frame, ["row", *([part.numbered] if part.numbered else [])], offset)

    side = (plan.rejected_uri, rejected(), config.source.separator) if plan.rejected_uri else None
    publish_dataset(plan.output_uri, files(), _manifest(plan, parts), side)


def predict_partitioned(config: BatchPredictionConfig, input_uri: str, output_uri: str, partitions: int | None,
                        version: str = "champion", on_bad_rows: str | None = None,
                        explain: bool = False) -> BatchPredictionResult:
    """plan, score every partition and combine, one after the other in this process (`python main.py predict
    --partitions N`): what the ml_batch_predict DAG spreads over workers."""
    with tempfile.TemporaryDirectory(prefix="batch-parts-") as tmp:
        plan = plan_partitions(config, input_uri, output_uri, Path(tmp) / "parts", version, on_bad_rows, explain,
                               partitions)
        for partition in plan.partitions:
            score_partition(config, plan, partition)
        return combine(config, plan)


def _loaded(config: BatchPredictionConfig, version: str) -> LoadedModel:
    """The version's bundle, loaded once per process and store: a process scoring several partitions (the CLI's
    --partitions, a benchmark's worker) pays the export check and load once. The plan pinned `version` to a number,
    and a bundle in a store never changes."""
    key = (str(config.model_store), config.mlflow.registered_model_name, version)
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time
        _LOADED[key] = load_version(config, version)
    return _LOADED[key]


def _chunks(config: BatchPredictionConfig, partition: Partition) -> Iterator[pd.DataFrame]:
    rows = config.batch.chunk_rows
    if partition.kind == "csv_bytes":
        return read_chunks(partition.uri, config.source, rows, byte_range=(partition.start, partition.end))
    if partition.kind == "parquet_row_groups":
        return read_chunks(partition.uri, config.source, rows, row_groups=(partition.start, partition.end))
    return read_chunks(partition.uri, config.source, rows)


def _done(staging: Path, partition: Partition) -> PartResult:
    marker = staging / f"{partition.name}.json"
    if not marker.is_file():
        raise BatchPredictionError(f"partition {partition.index} was not scored: no {marker}")
    return PartResult(**json.loads(marker.read_text()))


def _part_frames(path: Path) -> Iterator[pd.DataFrame]:
    """A part's rows, a row group (a scored chunk) at a time, with the column types they were written with."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        yield parquet.read_row_group(group).to_pandas()


def _rejected_frames(path: Path, config: BatchPredictionConfig) -> Iterator[pd.DataFrame]:
    """A part's side file as the text it holds (its header first, as an empty frame)."""
    options: dict[str, Any] = {"sep": config.source.separator, "dtype": str, "keep_default_na": False}
    yield pd.read_csv(path, nrows=0, **options)
    with pd.read_csv(path, chunksize=config.batch.chunk_rows, **options) as reader:
        yield from reader


def _shifted(frame: pd.DataFrame, columns: list[str] | None | str, offset: int) -> pd.DataFrame:
    """The row-number columns moved from the partition's numbering to the input's."""
    if not columns or not offset or frame.empty:
        return frame
    return frame.assign(**{c: frame[c].astype(np.int64) + offset for c in columns})


def _manifest(plan: BatchPlan, parts: list[PartResult]) -> dict[str, Any]:
    first_rows = np.cumsum([0, *(p.rows_in for p in parts)])[:-1].tolist()
    return {"input_uri": plan.input_uri, "output_uri": plan.output_uri, "model_name": plan.model_name,
            "model_version": plan.version, "on_bad_rows": plan.on_bad_rows, "note": plan.note,
            "rows_in": sum(p.rows_in for p in parts), "rows_out": sum(p.rows_out for p in parts),
            "rejected": sum(p.rejected for p in parts),
            "partitions": [{"index": partition.index, "input": partition.uri, "kind": partition.kind,
                            "start": partition.start, "end": partition.end, "first_row": first,
                            "rows_in": part.rows_in, "rows_out": part.rows_out, "rejected": part.rejected}
                           for partition, part, first in zip(plan.partitions, parts, first_rows)]}


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
