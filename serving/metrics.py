"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, serving/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before
any worker starts; every worker then writes its samples there and /metrics
sums them. Without it (tests, a single process) the app's own registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # one per app, so several apps can live in one test process
        self.requests = Counter("serving_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("serving_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("serving_predictions", "Rows predicted, by model version",
                                   ["model", "version"], registry=self.registry)
        self.model_loads = Counter("serving_model_loads", "Model load attempts by version and outcome",
                                   ["version", "outcome"], registry=self.registry)
        self.batch_rows = Histogram("serving_batch_rows", "Rows per model call (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000), registry=self.registry)

        # 1 for the engine that serves a loaded version; the reason is why not ONNX Runtime ("" when it serves).
        self.engine = Gauge("serving_engine", "Engine serving a model version, and the reason for a sklearn fallback",
                            ["version", "engine", "reason"], multiprocess_mode="livemax", registry=self.registry)
        self._engine_labels: tuple[str, str, str] | None = None

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
            return generate_latest(registry)
        return generate_latest(self.registry)
