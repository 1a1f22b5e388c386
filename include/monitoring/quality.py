"""Live quality with delayed labels: the captured predictions joined to their true values, scored with the gate's
metrics, and the promotion metric compared with the champion's own test-set value."""

from __future__ import annotations

import io
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from include.ml.config_file import DataSourceConfig
from include.ml.exceptions import IngestionError, MonitoringError, SourceTooLargeError
from include.ml.metrics import PROBABILITY_METRICS, prediction_metrics, probability_metrics
from include.ml.params_file import PromotionConfig
from include.ml.schema_file import SchemaConfig
from include.monitoring.capture import KEYS, PREDICTION, key_text

log = logging.getLogger(__name__)

_POSITION = "\x00position"  # a captured row's position while joined to the truth (no column can be named so)


@dataclass(frozen=True)
class LiveQuality:
    rows: int  # captured rows with a true value
    metrics: dict[str, float]  # empty below min_rows
    metric: str  # the promotion metric
    live: float | None
    test: float | None  # the champion's value on its test set
    worse_by: float | None  # relative: (live - test) / |test|, signed so that positive is worse
    dropped: bool
    note: str | None = None  # why there is no verdict, when it is not the number of rows

    def describe(self) -> str:
        if self.note:
            return f"live quality: {self.note}"
        if self.live is None or self.test is None or self.worse_by is None:
            return f"live quality: not enough labelled rows ({self.rows})"
        verdict = "DROPPED" if self.dropped else "ok"
        return (f"live {self.metric} {self.live:.4f} vs test {self.test:.4f} on {self.rows} labelled rows "
                f"({self.worse_by:+.1%} worse): {verdict}")


def read_ground_truth(uri: str, schema: SchemaConfig, s3_endpoint_url: str | None = None,
                      timeout_seconds: float = 30.0) -> pd.DataFrame:
    """The true values of a CSV or Parquet file (Parquet when the path ends in .parquet), with what joins them to
    the capture: request_id and row (0 when the file has none), or else an id column of schema.yaml (the capture's
    `key`, as text). `uri` is a local path (or file://), s3://bucket/key (read at `s3_endpoint_url`; None: AWS, or
    AWS_ENDPOINT_URL_S3) or http(s)://; a remote file is fetched as ingestion fetches a source (its caps, its
    refusal of ambiguous s3:// keys and of redirects to other schemes) and never cached."""
    target = schema.target
    ids = [c.name for c in schema.ids]
    frame = _read_truth(uri, ids, s3_endpoint_url, timeout_seconds)
    by = "request_id" if "request_id" in frame.columns else next((i for i in ids if i in frame.columns), None)
    if by is None or target not in frame.columns:
        needed = "request_id, optional row" + (f" (or the id column {' or '.join(map(repr, ids))})" if ids else "")
        missing = [c for c in ("request_id" if by is None else by, target) if c not in frame.columns]
        raise MonitoringError(f"ground truth {uri} lacks the column(s) {missing}; it needs {needed}, and "
                              f"{target!r}")
    if by != "request_id":
        frame = frame.assign(**{by: key_text(frame[by])}).dropna(subset=[by])
        return frame[[by, target]].drop_duplicates(subset=[by], keep="last")
    if "row" not in frame.columns:
        frame = frame.assign(row=0)
    frame = frame.astype({"request_id": str, "row": "int64"})
    return frame[[*KEYS, target]].drop_duplicates(subset=list(KEYS), keep="last")


def _read_truth(uri: str, ids: list[str], s3_endpoint_url: str | None, timeout_seconds: float) -> pd.DataFrame:
    """The file at `uri` as a frame; request_id and the id columns read as text from a CSV."""
    remote = uri.startswith(("s3://", "http://", "https://"))
    if not remote and "://" in uri and not uri.startswith("file://"):
        raise MonitoringError(f"ground truth {uri} is refused: use a local path, s3:// or http(s):// "
                              "(monitoring.ground_truth_uri)")
    path = urllib.parse.urlsplit(uri).path if remote else uri.removeprefix("file://")
    if remote:
        source: io.BytesIO | Path = io.BytesIO(_fetch_truth(uri, s3_endpoint_url, timeout_seconds))
    else:
        source = Path(path)
        if not source.is_file():
            raise MonitoringError(f"ground truth {uri} is not a file (monitoring.ground_truth_uri)")
    try:
        return pd.read_parquet(source) if path.endswith(".parquet") else \
            pd.read_csv(source, dtype={name: str for name in ("request_id", *ids)})
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"ground truth {uri} could not be read: {exc}") from exc


def _fetch_truth(uri: str, s3_endpoint_url: str | None, timeout_seconds: float) -> bytes:
    """A remote ground-truth file's bytes, through ingestion's fetch (its size cap and URI checks)."""
    from include.ml.components.ingestion import fetch  # here: ingestion is not needed for a local file

    try:
        return fetch(DataSourceConfig(uri=uri, s3_endpoint_url=s3_endpoint_url, timeout_seconds=timeout_seconds))
    except SourceTooLargeError as exc:
        raise MonitoringError(f"ground truth {uri} is refused: {exc.found}, over the cap of {exc.limit:,} bytes") \
            from exc
    except IngestionError as exc:
        raise MonitoringError(f"ground truth {uri} could not be fetched (monitoring.ground_truth_uri): "
                              f"{str(exc).removeprefix(f'source {uri} ')}") from exc


def first_capture_of_each_request(picked: pd.DataFrame, timestamps: pd.Series | None) -> pd.DataFrame:
    """One captured row per (request_id, row): the earliest captured (file order breaks a tie). A request id is the
    client's X-Request-ID, so a client reusing another's id would otherwise multiply that label's rows in the join;
    the first request under an id is the one its label was issued for, a later reuse is left out (and logged)."""
    if timestamps is not None:
        picked = picked.assign(_captured_at=timestamps.to_numpy()).sort_values("_captured_at", kind="stable") \
            .drop(columns="_captured_at")
    first = picked.drop_duplicates(subset=list(KEYS), keep="first")
    if len(first) < len(picked):
        log.warning("live quality: %d captured row(s) reuse a request_id and row captured earlier; each label is "
                    "joined to the first capture only", len(picked) - len(first))
    return first


def live_quality(captured: pd.DataFrame, truth: pd.DataFrame, schema: SchemaConfig, promotion: PromotionConfig,
                 test_metrics: dict[str, float], min_rows: int, drop: float,
                 probabilities: pd.DataFrame | None = None) -> LiveQuality:
    """The captured predictions scored against the true values, joined on request_id and row, or on the id column
    the truth has (every captured prediction of that key gets its true value); the gate's metrics, and the promotion
    metric against the champion's test-set value. `probabilities` (classification: one column per class, rows as in
    `captured`) are the captured class probabilities; the probability metrics need them for every labelled row."""
    by_request = "request_id" in truth.columns
    keys = list(KEYS) if by_request else [next(c for c in truth.columns if c != schema.target)]
    picked = captured[[*keys, PREDICTION]].assign(**{_POSITION: np.arange(len(captured))})  # row -> probabilities
    if by_request:
        picked = first_capture_of_each_request(picked.astype({"request_id": str, "row": "int64"}),
                                               captured["timestamp"] if "timestamp" in captured else None)
        joined = picked.merge(truth, on=keys)
    else:
        joined = picked.dropna(subset=keys).merge(truth, on=keys)
    joined = joined.dropna(subset=[PREDICTION, schema.target])
    metric, test = promotion.metric, test_metrics.get(promotion.metric)
    if len(joined) < min_rows:
        return LiveQuality(len(joined), {}, metric, None, test, None, False)
    y = joined[schema.target] if schema.task == "regression" else joined[schema.target].astype(str)
    scores = prediction_metrics(schema.task, y, joined[PREDICTION])
    missing = len(joined)
    if schema.task == "classification" and probabilities is not None:
        proba = probabilities.to_numpy(dtype=np.float64)[joined[_POSITION].to_numpy()]
        missing = int(np.isnan(proba).any(axis=1).sum())
        if not missing:
            scores |= probability_metrics(y, proba, list(probabilities.columns))
    live = scores.get(metric)
    if live is None and metric in PROBABILITY_METRICS and missing:
        note = (f"live {metric} needs the predicted probabilities, and {missing} of the {len(joined)} labelled "
                "captured rows have none (captured by a server that did not record them?)")
        return LiveQuality(len(joined), scores, metric, None, test, None, False, note)
    if live is None:
        note = f"live {metric} is undefined on the {len(joined)} labelled rows (one class only, or unknown labels)"
        return LiveQuality(len(joined), scores, metric, None, test, None, False, note)
    if test is None:
        return LiveQuality(len(joined), scores, metric, live, None, None, False,
                           f"the champion's run logged no test_{metric} to compare with")
    worse = (test - live if promotion.higher_is_better else live - test) / (abs(test) or 1.0)
    return LiveQuality(len(joined), scores, metric, live, test, worse, worse > drop)
