"""The paired predictions of a release, read from the capture and joined to the delayed labels.

A paired capture row (docs/serving.md, "Releases: shadow and canary") holds both answers under one request id:
`champion` and `candidate` objects, each {"version", "prediction", "probabilities"} (probabilities null for
regression). The capture files are read where the monitor reads them (monitoring.capture_dir: a local directory or
s3://bucket/prefix, include/monitoring/capture.py, with its caps on a file's size), filtered to the model, the two
versions and the period. The labels are monitoring.ground_truth_uri (include/monitoring/quality.py: a local file,
s3:// or http(s)://), joined on request_id and row, or on the id column the labels have. When one request id was
captured more than once (a client reusing an id), its first capture is the one its label belongs to.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml.config_file import MonitoringSources
from include.ml.exceptions import MonitoringError
from include.ml.schema_file import SchemaConfig
from include.monitoring import capture
from include.monitoring.quality import first_capture_of_each_request, read_ground_truth
from include.release.evidence.settings import EvidenceError, Task

log = logging.getLogger(__name__)

ROLES = ("champion", "candidate")


@dataclass(frozen=True)
class LabelledPairs:
    """Pairs with a true value, in capture order: y, each role's prediction, and (classification, when captured)
    each role's class probabilities as (rows, classes) arrays in the order of `classes`."""

    task: Task
    y: np.ndarray
    champion: np.ndarray
    candidate: np.ndarray
    classes: tuple[str, ...] = ()
    champion_proba: np.ndarray | None = None
    candidate_proba: np.ndarray | None = None
    captured: int = 0  # paired rows read, labelled or not

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.champion) != n or len(self.candidate) != n:
            raise ValueError(f"y, champion and candidate must have one value per pair ({n}, {len(self.champion)}, "
                             f"{len(self.candidate)})")
        for proba in (self.champion_proba, self.candidate_proba):
            if proba is not None and proba.shape != (n, len(self.classes)):
                raise ValueError(f"probabilities must be (pairs, classes) = ({n}, {len(self.classes)}), "
                                 f"got {proba.shape}")

    def __len__(self) -> int:
        return len(self.y)


def _paired_record(record: dict[str, Any], model_name: str, champion: str | None, candidate: str) -> bool:
    pair = record.get("champion"), record.get("candidate")
    return (record.get("model_name") == model_name and all(isinstance(p, dict) for p in pair)
            and str(pair[1].get("version")) == candidate
            and (champion is None or str(pair[0].get("version")) == champion))


def _file_records(path: Path, name: str, sources: MonitoringSources) -> list[dict[str, Any]]:
    data = capture.decompressed(path, int(sources.max_file_mb * 2**20), sources.max_file_rows)
    try:
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as exc:
        raise MonitoringError(f"capture file {name} is not valid capture JSON lines: {exc}") from exc


def _timestamp(record: dict[str, Any], name: str) -> pd.Timestamp:
    """The record's capture time, aware (UTC when it names no zone)."""
    try:
        stamp = pd.Timestamp(record["timestamp"])
    except (KeyError, ValueError, TypeError) as exc:
        raise MonitoringError(f"capture file {name} holds a paired row without a valid timestamp: {exc!r}") from exc
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp


def read_pairs(sources: MonitoringSources, model_name: str, champion: str | None, candidate: str, start: datetime,
               end: datetime) -> list[dict[str, Any]]:
    """The paired capture records of `candidate` (and `champion`, unless None) with start <= timestamp < end
    (aware datetimes), oldest first. A file past monitoring.max_file_mb / max_file_rows is skipped and logged."""
    records = []
    with capture.local_files(sources, model_name, capture.days(start, end)) as files:
        for path, name in files:
            try:
                found = _file_records(path, name, sources)
            except capture.CaptureFileTooLarge as exc:
                log.warning("release pairs: skipping %s: %s", name, exc)
                continue
            for record in found:
                if _paired_record(record, model_name, champion, candidate):
                    stamp = _timestamp(record, name)
                    if start <= stamp < end:
                        records.append(record | {"timestamp": stamp})
    records.sort(key=lambda r: r["timestamp"])
    log.info("release pairs: %d paired rows of %s v%s vs %s in %s", len(records), model_name, candidate,
             champion or "any champion", sources.capture_dir)
    return records


def _frame(records: list[dict[str, Any]], schema: SchemaConfig) -> pd.DataFrame:
    data: dict[str, Any] = {"request_id": [str(r.get("request_id")) for r in records],
                            "row": [int(r.get("row", 0)) for r in records],
                            "timestamp": [r["timestamp"] for r in records],
                            "_position": np.arange(len(records))}
    for column in schema.ids:
        data[column.name] = capture.key_text(pd.Series([(r.get("key") or {}).get(column.name) for r in records],
                                                       dtype=object)).to_numpy()
    return pd.DataFrame(data)


def _proba(records: list[dict[str, Any]], role: str, classes: tuple[str, ...]) -> np.ndarray | None:
    rows = [r[role].get("probabilities") for r in records]
    if not classes or any(not isinstance(p, dict) for p in rows):
        return None
    return np.array([[_probability(p.get(c)) for c in classes] for p in rows], dtype=np.float64)


def _probability(value: Any) -> float:
    """A captured class probability; NaN (the row is left out of the probability metrics) when it is none."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _classes(records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The classes in the order the server wrote the champion's probabilities (the model's class order)."""
    for record in records:
        given = record["champion"].get("probabilities")
        if isinstance(given, dict) and given:
            return tuple(str(c) for c in given)
    return ()


def join_labels(records: list[dict[str, Any]], truth: pd.DataFrame, schema: SchemaConfig) -> LabelledPairs:
    """The records that have a true value (read_ground_truth's frame), in capture order. Raises EvidenceError when
    a regression's labels or predictions are not numbers."""
    target = schema.target
    frame = _frame(records, schema)
    if "request_id" in truth.columns:
        joined = first_capture_of_each_request(frame, frame["timestamp"]).merge(truth, on=list(capture.KEYS))
    else:
        key = next(c for c in truth.columns if c != target)
        joined = frame.dropna(subset=[key]).merge(truth, on=key)
    joined = joined.dropna(subset=[target]).sort_values("_position", kind="stable")
    picked = [records[i] for i in joined["_position"]]
    answered = np.array([all(r[role].get("prediction") is not None for role in ROLES) for r in picked], dtype=bool)
    y = joined[target].to_numpy()[answered] if len(picked) else np.empty(0)
    return _labelled(schema.task, y, [r for r, keep in zip(picked, answered) if keep], len(records))


def _labelled(task: Task, y: np.ndarray, picked: list[dict[str, Any]], captured: int) -> LabelledPairs:
    if task == "regression":
        try:
            return LabelledPairs(task, y.astype(np.float64), *(np.array([r[role]["prediction"] for r in picked],
                                                                         dtype=np.float64) for role in ROLES),
                                 captured=captured)
        except (TypeError, ValueError) as exc:
            raise EvidenceError(f"a regression's labels and paired predictions must be numbers: {exc}") from exc
    classes = _classes(picked)
    return LabelledPairs(task, np.array([str(v) for v in y], dtype=object),
                         *(np.array([str(r[role]["prediction"]) for r in picked], dtype=object) for role in ROLES),
                         classes=classes, champion_proba=_proba(picked, "champion", classes),
                         candidate_proba=_proba(picked, "candidate", classes), captured=captured)


def labelled_pairs(sources: MonitoringSources, schema: SchemaConfig, model_name: str, champion: str | None,
                   candidate: str, start: datetime, end: datetime) -> LabelledPairs | None:
    """The release's pairs with their true values; None when monitoring.ground_truth_uri is not set.
    Raises EvidenceError when the capture or the labels cannot be read."""
    if not sources.ground_truth_uri:
        return None
    try:
        records = read_pairs(sources, model_name, champion, candidate, start, end)
        truth = read_ground_truth(sources.ground_truth_uri, schema, sources.s3_endpoint_url)
    except MonitoringError as exc:
        raise EvidenceError(f"the release's live quality cannot be judged: {exc}") from exc
    return join_labels(records, truth, schema)
