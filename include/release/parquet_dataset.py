"""A partitioned run's output as a Parquet dataset directory (include/release/partition_runs.py's combine).

The rule: an output ending in "/" names a directory, and the directory is a Parquet dataset (`scored/`, or
`scored.parquet/`); a name ending in ".csv/" is refused (a directory is never CSV). It holds one
`part-NNNNN.parquet` per partition, NNNNN the partition's index, so files sort in partition order and
`pd.read_parquet(dir)` reads the rows in input order; a partition none of whose rows reached the output (skip, every
row bad) has no file. Every file has the first file's column types (as a single Parquet output's row groups do).
`_manifest.json` inside it is the single-file manifest plus each partition's `file` (None without one) and `files`
(name and rows of each). Readers ignore both it and the side file: pyarrow skips names starting with "_" or ".".

Publishing is atomic for a reader of the directory's name: the dataset is written into a temporary sibling
(`.<name>.<random>.tmp`) and renamed into place; an existing directory is first renamed aside, then the new one in,
then the old one removed (between the two renames the name is missing for an instant; a failure of the second puts
the old one back). A combine that fails before that leaves the previous directory as it was. With skip or flag, the
side file sits beside the directory, `<name>.rejected.csv`, published before it (removed again if it then fails).

An s3:// prefix is refused: objects cannot be renamed into place together, and a reader would see a mix of two runs'
parts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml.exceptions import BatchPredictionError
from include.release.batch import REJECTED_SUFFIX

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


def is_dataset(output_uri: str) -> bool:
    """Whether `output_uri` names a Parquet dataset directory (it ends in "/")."""
    return output_uri.endswith("/")


def dataset_target(output_uri: str) -> Path:
    """The local directory a dataset output names; BatchPredictionError for an s3:// or other remote prefix, a
    `.csv/` name, or a path that is a file."""
    if output_uri.startswith("s3://"):
        raise BatchPredictionError(f"output {output_uri}: a Parquet dataset directory (an output ending in '/') must "
                                   "be local: S3 objects cannot be published together atomically; name one "
                                   ".parquet object instead")
    if "://" in output_uri and not output_uri.startswith("file://"):
        raise BatchPredictionError(f"unsupported output {output_uri!r}: use a local path or s3://bucket/key")
    target = Path(output_uri.removeprefix("file://").rstrip("/"))
    if not target.name:
        raise BatchPredictionError(f"output {output_uri}: name the dataset's directory, not the root")
    if target.suffix.lower() == ".csv":
        raise BatchPredictionError(f"output {output_uri}: an output ending in '/' is a Parquet dataset directory, "
                                   "but its name asks for CSV; give a .csv file name (no '/') for one CSV output")
    if target.exists() and not target.is_dir():
        raise BatchPredictionError(f"output {output_uri} names a directory, but {target} is a file")
    return target


def rejected_uri(output_uri: str) -> str:
    """The side file of a dataset output: beside the directory, `<name>.rejected.csv`."""
    return output_uri.rstrip("/") + REJECTED_SUFFIX


def manifest_uri(output_uri: str) -> str:
    return output_uri + MANIFEST


def publish_dataset(output_uri: str, parts: Iterable[tuple[str, Iterator[pd.DataFrame]]], manifest: dict[str, Any],
                    rejected: tuple[str, Iterable[pd.DataFrame], str] | None = None) -> list[dict[str, Any]]:
    """Write `parts` (each a file stem and its frames, in partition order) as the dataset `output_uri`, with
    `manifest` (its "partitions" in the same order, given each one's `file`, and `files`) as `_manifest.json`, and
    `rejected` (the side file's uri, frames and separator) beside it; publish them as the module's doc says. The
    files written, as the manifest lists them.

    Raises BatchPredictionError (the output cannot be written, a part's columns do not match the first's) or what
    reading a part raises; nothing is published then."""
    target = dataset_target(output_uri)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as exc:
        raise BatchPredictionError(f"output {output_uri} cannot be written: {exc}") from exc
    side = None
    try:
        files = _write_parts(tmp, parts)
        written = {f["file"] for f in files}
        for entry in manifest.get("partitions", []):
            name = f"part-{entry['index']:05d}.parquet"
            entry["file"] = name if name in written else None
        _write_synced(tmp / MANIFEST, json.dumps({**manifest, "files": files}, indent=1))
        _sync_dir(tmp)
        if rejected is not None:
            side = _write_side_file(Path(rejected[0].removeprefix("file://")), rejected[1], rejected[2])
            os.replace(side, Path(rejected[0].removeprefix("file://")))
            side = None
        try:
            _swap(tmp, target)
        except BaseException:
            if rejected is not None:
                Path(rejected[0].removeprefix("file://")).unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if side is not None:
            side.unlink(missing_ok=True)
    return files


def _write_parts(folder: Path, parts: Iterable[tuple[str, Iterator[pd.DataFrame]]]) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files: list[dict[str, Any]] = []
    schema: Any = None
    for stem, frames in parts:
        path, rows, out = folder / f"{stem}.parquet", 0, None
        try:
            for frame in frames:
                if frame.empty:
                    continue
                table = pa.Table.from_pandas(frame, preserve_index=False)
                schema = schema or table.schema
                try:
                    table = table.cast(schema)
                except (pa.ArrowInvalid, ValueError) as exc:
                    raise BatchPredictionError(f"{stem}'s columns {table.schema.types} do not match the first "
                                               f"part's {schema.types}: {exc}") from exc
                out = out or pq.ParquetWriter(path, schema)
                out.write_table(table)
                rows += len(table)
        finally:
            if out is not None:
                out.close()
        if out is not None:
            with path.open("rb+") as file:
                os.fsync(file.fileno())
            files.append({"file": path.name, "rows": rows})
    return files


def _write_side_file(target: Path, frames: Iterable[pd.DataFrame], separator: str) -> Path:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as file:
            for frame in frames:
                frame.to_csv(file, sep=separator, index=False, header=file.tell() == 0)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap(new: Path, target: Path) -> None:
    """Rename `new` onto `target`: an existing target is renamed aside first and removed once `new` is in place."""
    old = None
    try:
        if target.is_dir():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
                old = None
            raise
        _sync_dir(target.parent)
    except OSError as exc:
        raise BatchPredictionError(f"output {target}/ cannot be published: {exc}") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
