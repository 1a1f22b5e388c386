"""The monitor's capture in partitions: each partition's capture files reduced to a Partial, the Partials merged.

A partition is a group of the period's capture days (one day each by default). Its Partial holds what the drift
statistics need, exactly (docs/monitoring.md, "Partitions"):

- a numeric feature (and a regressor's prediction): its present values, sorted (float64), and its missing count;
- a categorical feature (and a classifier's prediction): the count of each value as text, in the order the values
  were first captured, and its missing count;
- a datetime feature: its present moments (int64 ns, as drift.moments parses them) in capture order (the order
  its hour / day-of-week categories are first seen in), and its missing count;
- a bottom-k sample of its rows by a hash of (request_id, row) (ties broken by file and line): the bottom-k of a
  union is the bottom-k of its parts' bottom-k, so the merged sample does not depend on the partitioning;
- with ground truth configured, each row's keys, prediction (and class probabilities) for the label join;
- its rows, files read and files skipped (past monitoring.max_file_mb / max_file_rows).

`merge` rebuilds every column at full length (sorted values or repeated counts, then one missing value per missing
row): every statistic of drift.py is per column and independent of the order of its values, so drift.compare on
the merged columns gives the numbers of one process reading every file. A partial is saved as one .npz file (no
pickle: text and frames are stored as JSON and Parquet bytes), written beside its final name and renamed into place,
so a retried partition task overwrites a killed try's file whole.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml import artifacts
from include.ml.config_file import MonitoringSources
from include.ml.exceptions import MonitoringError
from include.ml.schema_file import SchemaConfig
from include.monitoring import capture, drift

log = logging.getLogger(__name__)

ORDER = ("_hash", "_file", "_pos")  # the sample's order: the row's hash, then its file and line
MAX_PARTITIONS = 256


class PartialError(MonitoringError):
    """A partial that is missing, unreadable, or does not add up with the others."""


@dataclass(frozen=True)
class MonitorPlan:
    """What every partition task reads (the champion version fixed once) and where it writes its partial."""

    model_name: str
    version: str
    start: str  # ISO 8601, UTC
    end: str
    classes: tuple[str, ...]  # a classifier's classes as text (capture's probability columns)
    partitions: tuple[tuple[str, ...], ...]  # each partition's capture days (YYYY-MM-DD)
    folder: str  # where the partials go (the run's monitor/partials)
    sample_rows: int  # k of the bottom-k sample (attribution)
    keys: bool  # keep each row's keys for the label join (ground truth configured)

    @property
    def window(self) -> tuple[datetime, datetime]:
        return datetime.fromisoformat(self.start), datetime.fromisoformat(self.end)

    def path(self, index: int) -> Path:
        return Path(self.folder) / f"part-{index:04d}.npz"

    def summary(self) -> str:
        return (f"{self.model_name} v{self.version}, {self.start} to {self.end}: {len(self.partitions)} "
                f"partition(s) of capture days")

    def xcom(self) -> dict[str, Any]:
        return {"plan": asdict(self), "partitions": list(range(len(self.partitions))), "summary": self.summary()}

    @classmethod
    def of(cls, payload: dict[str, Any]) -> MonitorPlan:
        return cls(**{**payload, "classes": tuple(payload["classes"]),
                      "partitions": tuple(tuple(days) for days in payload["partitions"])})


def plan(model_name: str, version: str, start: datetime, end: datetime, classes: tuple[str, ...], folder: Path,
         sample_rows: int, keys: bool, partitions: int | None = None) -> MonitorPlan:
    """The period's capture days in `partitions` contiguous groups (None: one day each; never more than days)."""
    days = capture.days(start, end)
    if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
        raise PartialError(f"monitor partitions must be 1 to {MAX_PARTITIONS}, not {partitions}")
    count = len(days) if partitions is None else min(partitions, len(days))
    size, extra = divmod(len(days), count)
    groups, first = [], 0
    for n in range(count):
        last = first + size + (n < extra)
        groups.append(tuple(days[first:last]))
        first = last
    return MonitorPlan(model_name, version, start.isoformat(), end.isoformat(), tuple(classes), tuple(groups),
                       str(folder), sample_rows, keys)


@dataclass(frozen=True)
class Partial:
    rows: int
    files: int
    skipped: tuple[str, ...]
    numeric: dict[str, np.ndarray]  # present values, sorted (float64)
    moments: dict[str, np.ndarray]  # present datetime moments, int64 ns, in capture order
    counts: dict[str, dict[str, int]]  # value (text) -> count, in first-captured order
    missing: dict[str, int]
    sample: pd.DataFrame  # bottom-k rows by ORDER, with the ORDER columns
    keys: pd.DataFrame | None = None  # request_id, row, timestamp, id columns, prediction (ground truth only)
    probabilities: pd.DataFrame | None = None  # with keys, a classifier's captured class probabilities


def kinds(schema: SchemaConfig) -> dict[str, drift.Kind]:
    """Every column a partial reduces: the features, then the prediction."""
    prediction: drift.Kind = "numeric" if schema.task == "regression" else "categorical"
    return {**drift.kinds_from_schema(schema.features), capture.PREDICTION: prediction}


def row_hash(frame: pd.DataFrame) -> np.ndarray:
    """A deterministic 64-bit hash of each row's (request_id, row)."""
    text = np.array([f"{r}\x00{n}" for r, n in zip(frame["request_id"], frame["row"])], dtype=object)
    return pd.util.hash_array(text)


def bottom_k(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k rows first in ORDER (ORDER is unique per captured line, so this is a total order)."""
    ordered = frame.sort_values(list(ORDER), kind="stable", ignore_index=True)
    return ordered.head(k).reset_index(drop=True)


class _Reduction:
    def __init__(self, schema: SchemaConfig, planned: MonitorPlan) -> None:
        self.schema, self.plan, self.kinds = schema, planned, kinds(schema)
        self.formats = {c.name: c.format for c in schema.features}
        self.values: dict[str, list[np.ndarray]] = {name: [] for name in self.kinds}
        self.counts: dict[str, dict[str, int]] = {n: {} for n, k in self.kinds.items() if k == "categorical"}
        self.missing = dict.fromkeys(self.kinds, 0)
        self.rows, self.files, self.skipped = 0, 0, []
        self.sample: pd.DataFrame | None = None
        self.keys: list[pd.DataFrame] = []
        self.probabilities: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame, proba: pd.DataFrame | None, name: str) -> None:
        self.rows, self.files = self.rows + len(frame), self.files + 1
        for column, kind in self.kinds.items():
            values = frame[column]
            if kind == "numeric":
                present = values.to_numpy(dtype=np.float64, na_value=np.nan)
                present = present[~np.isnan(present)]
            elif kind == "datetime":
                parsed = drift.moments(values, self.formats.get(column)).dropna()
                present = parsed.to_numpy(dtype="datetime64[ns]").view(np.int64)
            else:
                codes, uniques = pd.factorize(values.dropna().astype(str))
                counted, seen = np.bincount(codes, minlength=len(uniques)), self.counts[column]
                for value, count in zip(uniques, counted):
                    seen[str(value)] = seen.get(str(value), 0) + int(count)
                present = codes
            if kind != "categorical":
                self.values[column].append(present)
            self.missing[column] += len(frame) - len(present)
        candidates = frame.assign(_hash=row_hash(frame), _file=name, _pos=np.arange(len(frame), dtype=np.int64))
        both = candidates if self.sample is None else pd.concat([self.sample, candidates], ignore_index=True)
        self.sample = bottom_k(both, self.plan.sample_rows)
        if self.plan.keys:
            self.keys.append(frame[[*capture.KEYS, "timestamp", *(c.name for c in self.schema.ids),
                                    capture.PREDICTION]])
            if proba is not None:
                self.probabilities.append(proba)

    def partial(self) -> Partial:
        numeric = {n: np.sort(np.concatenate(v)) if v else np.empty(0) for n, v in self.values.items()
                   if self.kinds[n] == "numeric"}
        moments = {n: np.concatenate(v) if v else np.empty(0, np.int64) for n, v in self.values.items()
                   if self.kinds[n] == "datetime"}
        empty = capture.empty_frame(self.schema)
        sample = self.sample if self.sample is not None else empty.assign(
            _hash=np.empty(0, np.uint64), _file=pd.Series([], dtype=object), _pos=np.empty(0, np.int64))
        keys = probabilities = None
        if self.plan.keys:
            keys = pd.concat(self.keys, ignore_index=True) if self.keys else \
                empty[[*capture.KEYS, "timestamp", *(c.name for c in self.schema.ids), capture.PREDICTION]]
            if self.plan.classes:
                probabilities = pd.concat(self.probabilities, ignore_index=True) if self.probabilities else \
                    pd.DataFrame({c: np.empty(0) for c in self.plan.classes})
        return Partial(self.rows, self.files, tuple(self.skipped), numeric, moments, self.counts, self.missing,
                       sample, keys, probabilities)


def reduce(sources: MonitoringSources, schema: SchemaConfig, planned: MonitorPlan, index: int) -> Partial:
    """Partition `index` of the plan: its days' capture files read as capture.collect reads them, reduced."""
    if not 0 <= index < len(planned.partitions):
        raise PartialError(f"partition {index} is not in the plan ({len(planned.partitions)} partitions)")
    start, end = planned.window
    reduction = _Reduction(schema, planned)
    with capture.local_files(sources, planned.model_name, list(planned.partitions[index])) as files:
        for path, name in files:
            try:
                frame, proba = capture.read_file(path, schema, planned.model_name, planned.version, start, end,
                                                 planned.classes, max_bytes=int(sources.max_file_mb * 2**20),
                                                 max_rows=sources.max_file_rows)
            except capture.CaptureFileTooLarge as exc:
                log.warning("capture: skipping %s: %s", name, exc)
                reduction.skipped.append(f"{name}: {exc}")
                continue
            reduction.add(frame, proba, name)
    log.info("partials: partition %d (%s): %d rows of %s v%s from %d file(s)", index,
             ", ".join(planned.partitions[index]), reduction.rows, planned.model_name, planned.version,
             reduction.files)
    return reduction.partial()


@dataclass(frozen=True)
class Merged:
    current: pd.DataFrame  # every feature and the prediction at full length (values sorted or grouped)
    sample: pd.DataFrame  # the bottom-k sample, in capture's frame layout
    keys: pd.DataFrame | None  # what quality.live_quality joins on (ground truth configured)
    probabilities: pd.DataFrame | None
    files: int
    skipped: tuple[str, ...]


def merge(partials: list[Partial], schema: SchemaConfig, sample_rows: int) -> Merged:
    """The partials (in partition order) as one capture: exact per-column values, the bottom-k sample, the keys."""
    rows = sum(p.rows for p in partials)
    columns: dict[str, pd.Series] = {}
    for column, kind in kinds(schema).items():
        missing = sum(p.missing[column] for p in partials)
        if kind == "numeric":
            present = np.sort(np.concatenate([np.empty(0), *(p.numeric[column] for p in partials)]))
            values = pd.Series(np.concatenate([present, np.full(missing, np.nan)]))
        elif kind == "datetime":
            present = np.concatenate([np.empty(0, np.int64), *(p.moments[column] for p in partials)])
            stamps = np.concatenate([present.view("datetime64[ns]"), np.full(missing, np.datetime64("NaT", "ns"))])
            values = pd.Series(stamps, dtype="datetime64[ns]")
        else:
            counts: dict[str, int] = {}
            for p in partials:
                for value, count in p.counts[column].items():
                    counts[value] = counts.get(value, 0) + count
            repeated = np.repeat(np.array(list(counts), dtype=object), list(counts.values())) if counts else []
            values = pd.Series([*repeated, *([None] * missing)], dtype=object)
        if len(values) != rows:
            raise PartialError(f"the partials do not add up: column {column!r} has {len(values)} values "
                               f"(present and missing) for {rows} captured rows")
        columns[column] = values
    samples = [p.sample for p in partials]
    sample = bottom_k(pd.concat(samples, ignore_index=True), sample_rows) if samples else pd.DataFrame()
    keys = probabilities = None
    if partials and partials[0].keys is not None:
        keys = pd.concat([p.keys for p in partials], ignore_index=True)
        if partials[0].probabilities is not None:
            probabilities = pd.concat([p.probabilities for p in partials], ignore_index=True)
    sample = sample.drop(columns=list(ORDER), errors="ignore")
    for column in sample.columns:  # text columns one way (capture's frames mix object and str): object, None
        if sample[column].dtype == object or pd.api.types.is_string_dtype(sample[column]):
            values = sample[column].astype(object)
            sample[column] = values.where(values.notna(), None)
    return Merged(pd.DataFrame(columns), sample, keys, probabilities,
                  sum(p.files for p in partials), tuple(s for p in partials for s in p.skipped))


def save(partial: Partial, path: Path) -> None:
    """One .npz file, renamed into place once written whole (a retry replaces it)."""
    names = {"numeric": list(partial.numeric), "moments": list(partial.moments)}
    meta = {"rows": partial.rows, "files": partial.files, "skipped": list(partial.skipped), **names,
            "counts": {n: list(c.items()) for n, c in partial.counts.items()}, "missing": partial.missing,
            "text": {k: [c for c in f.columns if f[c].dtype == object] for k, f in  # object columns stay object
                     (("sample", partial.sample), ("keys", partial.keys), ("probabilities", partial.probabilities))
                     if f is not None}}
    arrays: dict[str, np.ndarray] = {"meta": _bytes(json.dumps(meta).encode()), "sample": _parquet(partial.sample)}
    arrays |= {f"numeric_{i}": partial.numeric[n] for i, n in enumerate(names["numeric"])}
    arrays |= {f"moments_{i}": partial.moments[n] for i, n in enumerate(names["moments"])}
    if partial.keys is not None:
        arrays["keys"] = _parquet(partial.keys)
    if partial.probabilities is not None:
        arrays["probabilities"] = _parquet(partial.probabilities)
    with artifacts.atomic_path(path) as tmp, tmp.open("wb") as out:
        np.savez(out, **arrays)


def load(path: Path) -> Partial:
    if not path.is_file():
        raise PartialError(f"partial {path} is missing: its partition task has not written it (run it first)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            numeric = {n: stored[f"numeric_{i}"] for i, n in enumerate(meta["numeric"])}
            moments = {n: stored[f"moments_{i}"] for i, n in enumerate(meta["moments"])}
            frames = {k: _frame(stored[k], meta["text"][k]) if k in stored else None
                      for k in ("sample", "keys", "probabilities")}
    except (OSError, ValueError, KeyError) as exc:
        raise PartialError(f"partial {path} cannot be read: {exc}") from exc
    return Partial(meta["rows"], meta["files"], tuple(meta["skipped"]), numeric, moments,
                   {n: dict((v, int(c)) for v, c in pairs) for n, pairs in meta["counts"].items()},
                   meta["missing"], frames["sample"], frames["keys"], frames["probabilities"])


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _frame(data: np.ndarray, text: list[str]) -> pd.DataFrame:
    """A frame back from its Parquet bytes, its object columns (text and None) as they were, not pandas' str."""
    frame = pd.read_parquet(io.BytesIO(data.tobytes()))
    for column in text:
        values = frame[column].astype(object)
        frame[column] = values.where(values.notna(), None)
    return frame


def _parquet(frame: pd.DataFrame) -> np.ndarray:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return _bytes(buffer.getvalue())
