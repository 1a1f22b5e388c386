"""Live quality with delayed labels: the captured predictions joined to their true values, scored with the gate's
metrics, and the promotion metric compared with the champion's own test-set value."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from include.ml.entities import PromotionConfig, SchemaConfig
from include.ml.exceptions import MonitoringError
from include.ml.metrics import prediction_metrics
from include.monitoring.capture import KEYS, PREDICTION

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


def read_ground_truth(uri: str, target: str) -> pd.DataFrame:
    """request_id, row (0 when the file has none) and the target, from a local CSV or Parquet file."""
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise MonitoringError(f"ground truth {uri} is not a file (monitoring.ground_truth_uri)")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"request_id": str})
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise MonitoringError(f"ground truth {uri} could not be read: {exc}") from exc
    missing = [c for c in ("request_id", target) if c not in frame.columns]
    if missing:
        raise MonitoringError(f"ground truth {uri} lacks the column(s) {missing}; it needs request_id, optional row, "
                              f"and {target!r}")
    if "row" not in frame.columns:
        frame = frame.assign(row=0)
    frame = frame.astype({"request_id": str, "row": "int64"})
    return frame[[*KEYS, target]].drop_duplicates(subset=list(KEYS), keep="last")


def live_quality(captured: pd.DataFrame, truth: pd.DataFrame, schema: SchemaConfig, promotion: PromotionConfig,
                 test_metrics: dict[str, float], min_rows: int, drop: float) -> LiveQuality:
    joined = captured[[*KEYS, PREDICTION]].astype({"request_id": str, "row": "int64"}).merge(truth, on=list(KEYS))
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
