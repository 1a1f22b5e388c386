"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, serving/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before
any worker starts; every worker then writes its samples there and /metrics
sums them. Without it (tests, a single process) the app's own registry is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from serving.capture import CaptureCounters
from serving.capture_shipping import shipped_totals

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# |candidate - champion| / max(|champion|, 1e-9) of a regression pair's row
AGREEMENT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
AGREEMENT_CAP = 1e6  # a larger (or non-finite) difference is observed as this, so the sum stays finite
ROLES = ("champion", "candidate")


class Metrics:
    def __init__(self, capture_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()  # one per app, so several apps can live in one test process
        self.requests = Counter("serving_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("serving_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("serving_predictions", "Rows predicted, by model version",
                                   ["model", "version"], registry=self.registry)
        self._predicted: dict[tuple[str, str], Counter] = {}
        self.model_loads = Counter("serving_model_loads", "Model load attempts by version and outcome",
                                   ["version", "outcome"], registry=self.registry)
        self.batch_rows = Histogram("serving_batch_rows", "Rows per model call (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000), registry=self.registry)
        self.capture_rows = Counter("serving_capture_rows", "Rows written to prediction capture files",
                                    registry=self.registry)
        self.capture_dropped = Counter("serving_capture_dropped_rows", "Sampled rows not captured, by reason "
                                       "(queue_full, disk_full, error, shutdown)", ["reason"], registry=self.registry)
        # livemin: 0 as soon as one live worker has stopped capturing (the disk is shared, so all soon will).
        self.capture_enabled = Gauge("serving_capture_enabled", "1 while prediction capture writes, 0 when it is "
                                     "off or stopped by the disk fill level", registry=self.registry,
                                     multiprocess_mode="livemin")
        self.capture_enabled.set(0)
        # 1 for the engine that serves a loaded version; the reason is why not ONNX Runtime ("" when it serves).
        self.engine = Gauge("serving_engine", "Engine serving a model version, and the reason for a sklearn fallback",
                            ["version", "engine", "reason"], multiprocess_mode="livemax", registry=self.registry)
        self._engine_labels: tuple[str, str, str] | None = None
        self.release = ReleaseMetrics(self.registry)
        # The shipper is another process (a systemd timer): its totals come from its file in the capture dir.
        self.collectors: list[Collector] = [_ShippedCollector(capture_dir)] if capture_dir is not None else []
        for collector in self.collectors:
            self.registry.register(collector)

    def predicted(self, name: str, version: str, rows: int) -> None:
        counter = self._predicted.get((name, version))
        if counter is None:  # labels() takes a lock and formats the labels on every call
            counter = self._predicted[(name, version)] = self.predictions.labels(name, version)
        counter.inc(rows)

    def capture_counters(self) -> CaptureCounters:
        return CaptureCounters(captured=self.capture_rows.inc,
                               dropped=lambda reason, rows: self.capture_dropped.labels(reason).inc(rows),
                               enabled=lambda on: self.capture_enabled.set(1 if on else 0))

    def model_event(self, version: str, outcome: str, engine: tuple[str, str | None] | None = None) -> None:
        """A load attempt; for a model now served, its engine replaces the previous one in serving_engine."""
        self.model_loads.labels(version, outcome).inc()
        if outcome != "loaded" or engine is None:
            return
        if self._engine_labels:
            self.engine.labels(*self._engine_labels).set(0)
        self._engine_labels = (version, engine[0], engine[1] or "")
        self.engine.labels(*self._engine_labels).set(1)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            for collector in self.collectors:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ReleaseMetrics:
    """A release's evidence (serving/release.py): every model call during a release by role (champion, candidate)
    and outcome, its scoring time, the agreement of paired answers, and pairs dropped off the request path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("serving_release_requests", "Model calls during a release, by role (champion, "
                                "candidate) and outcome (ok, error)", ["role", "outcome"], registry=registry)
        self.errors = Counter("serving_release_errors", "Failed model calls during a release, by role and reason "
                              "(exception; input: the rows do not validate against the model's contract)",
                              ["role", "reason"], registry=registry)
        self.seconds = Histogram("serving_release_seconds", "Model scoring time per request during a release, by role",
                                 ["role"], buckets=LATENCY_BUCKETS, registry=registry)
        self.agreement = Histogram("serving_release_agreement", "Regression pairs: |candidate - champion| / "
                                   "max(|champion|, 1e-9) per row", buckets=AGREEMENT_BUCKETS, registry=registry)
        self.pairs = Counter("serving_release_pairs", "Classification pairs (rows) by whether the two labels agree",
                             ["agree"], registry=registry)
        self.dropped = Counter("serving_release_shadow_dropped", "Requests whose second scoring (off the request "
                               "path) was dropped: the scorer's queue was full, or the worker stopped",
                               registry=registry)
        # labels() takes a lock and formats the labels on every call: the children are made once
        self._ok = {role: self.requests.labels(role, "ok") for role in ROLES}
        self._error = {role: self.requests.labels(role, "error") for role in ROLES}
        self._seconds = {role: self.seconds.labels(role) for role in ROLES}
        self._agree = {True: self.pairs.labels("true"), False: self.pairs.labels("false")}

    def ok(self, role: str, seconds: float) -> None:
        self._ok[role].inc()
        self._seconds[role].observe(seconds)

    def ok_many(self, role: str, seconds: list[float]) -> None:
        """Successful calls of `role`, one per entry of `seconds`."""
        self._ok[role].inc(len(seconds))
        observe_many(self._seconds[role], seconds)

    def error(self, role: str, reason: str) -> None:
        self._error[role].inc()
        self.errors.labels(role, reason).inc()

    def compared_many(self, differences: list[float], agree: int, disagree: int) -> None:
        """Paired rows: regression `differences` (relative_differences), classification label (dis)agreements."""
        if differences:
            observe_many(self.agreement, differences)
        if agree:
            self._agree[True].inc(agree)
        if disagree:
            self._agree[False].inc(disagree)

    def compared(self, champion: list[Any], candidate: list[Any], regression: bool) -> None:
        """One pair's rows: relative differences (regression) or label agreement (classification)."""
        if regression:
            self.compared_many(relative_differences(champion, candidate), 0, 0)
            return
        agree = sum(1 for a, b in zip(champion, candidate) if a == b)
        self.compared_many([], agree, len(champion) - agree)


def relative_differences(champion: list[Any], candidate: list[Any]) -> list[float]:
    """|candidate - champion| / max(|champion|, 1e-9) per row; above AGREEMENT_CAP (or not finite): the cap."""
    a, b = np.asarray(champion, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        differences = np.abs(b - a) / np.maximum(np.abs(a), 1e-9)
    return np.where(differences <= AGREEMENT_CAP, differences, AGREEMENT_CAP).tolist()  # NaN too


def observe_many(histogram: Any, amounts: list[float]) -> None:
    """histogram.observe(a) for each amount, written as one increment per bucket touched and one to the sum (what
    observe writes per amount): the same exposition, a few writes instead of two per amount."""
    buckets, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or total is None or bounds is None or len(buckets) != len(bounds):
        for amount in amounts:  # a prometheus_client whose internals differ: the public way
            histogram.observe(amount)
        return
    index = np.minimum(np.searchsorted(np.asarray(bounds, dtype=np.float64), amounts, side="left"), len(bounds) - 1)
    for i, count in enumerate(np.bincount(index, minlength=len(bounds)).tolist()):
        if count:
            buckets[i].inc(count)
    total.inc(float(np.sum(amounts)))


class _ShippedCollector(Collector):
    """Capture files and rows shipped to S3 so far (serving/capture_shipping.py's ship() keeps the totals)."""

    def __init__(self, capture_dir: Path) -> None:
        self.capture_dir = capture_dir

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = shipped_totals(self.capture_dir)
        yield CounterMetricFamily("serving_capture_shipped_files", "Capture files shipped to S3",
                                  value=totals["files"])
        yield CounterMetricFamily("serving_capture_shipped_rows", "Capture rows shipped to S3", value=totals["rows"])
