"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, serving/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before
any worker starts; every worker then writes its samples there and /metrics
sums them. Without it (tests, a single process) the app's own registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
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

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
