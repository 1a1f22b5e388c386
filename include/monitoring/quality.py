"""Live quality with delayed labels: the captured predictions joined to their true values, scored with the gate's
metrics, and the promotion metric compared with the champion's own test-set value."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from include.ml.components.evaluation import prediction_metrics
from include.ml.entities import PromotionConfig, SchemaConfig
from include.ml.exceptions import MonitoringError
from include.monitoring.capture import KEYS, PREDICTION, key_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveQuality:
    rows: int  # captured rows with a true value
    metrics: dict[str, float]  # empty below min_rows
    metric: str  # the promotion metric
    live: float | None
    test: float | None  # the champion's value on its test set
    worse_by: float | None  # relative: (live - test) / |test|, signed so that positive is worse
    dropped: bool

    def describe(self) -> str:
        if self.live is None or self.test is None or self.worse_by is None:
            return f"live quality: not enough labelled rows ({self.rows})"
        verdict = "DROPPED" if self.dropped else "ok"
        return (f"live {self.metric} {self.live:.4f} vs test {self.test:.4f} on {self.rows} labelled rows "
                f"({self.worse_by:+.1%} worse): {verdict}")


def read_ground_truth(uri: str, schema: SchemaConfig) -> pd.DataFrame:
    """The true values of a local CSV or Parquet file, with what joins them to the capture: request_id and row (0
    when the file has none), or else an id column of schema.yaml (the capture's `key`, as text)."""
    target = schema.target
    ids = [c.name for c in schema.ids]
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise MonitoringError(f"ground truth {uri} is not a file (monitoring.ground_truth_uri)")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else \
            pd.read_csv(path, dtype={name: str for name in ("request_id", *ids)})
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"ground truth {uri} could not be read: {exc}") from exc
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


def live_quality(captured: pd.DataFrame, truth: pd.DataFrame, schema: SchemaConfig, promotion: PromotionConfig,
                 test_metrics: dict[str, float], min_rows: int, drop: float) -> LiveQuality:
    """The captured predictions scored against the true values, joined on request_id and row, or on the id column
    the truth has (every captured prediction of that key gets its true value)."""
    if "request_id" in truth.columns:
        joined = captured[[*KEYS, PREDICTION]].astype({"request_id": str, "row": "int64"}).merge(truth, on=list(KEYS))
    else:
        key = next(c for c in truth.columns if c != schema.target)
        joined = captured[[key, PREDICTION]].dropna(subset=[key]).merge(truth, on=key)
    joined = joined.dropna(subset=[PREDICTION, schema.target])
    metric, test = promotion.metric, test_metrics.get(promotion.metric)
    if len(joined) < min_rows:
        return LiveQuality(len(joined), {}, metric, None, test, None, False)
    y = joined[schema.target] if schema.task == "regression" else joined[schema.target].astype(str)
    scores = prediction_metrics(schema.task, y, joined[PREDICTION])
    live = scores.get(metric)
    if live is None or test is None:
        return LiveQuality(len(joined), scores, metric, live, test, None, False)
    worse = (test - live if promotion.higher_is_better else live - test) / (abs(test) or 1.0)
    return LiveQuality(len(joined), scores, metric, live, test, worse, worse > drop)
