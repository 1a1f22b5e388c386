"""Issue 23: the scorer writes a round's figures at once (serving/metrics.py: observe_many); the exposition is
exactly what one observe() per value gives."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from serving.metrics import AGREEMENT_BUCKETS, AGREEMENT_CAP, Metrics, observe_many, relative_differences

VALUES = [0.0, 0.0005, 0.001, 0.0011, 0.1, 0.1, 0.7, 1.0, 3.0, 250.0, AGREEMENT_CAP]


def exposition(fill: object) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", buckets=AGREEMENT_BUCKETS, registry=registry)
    fill(histogram)  # type: ignore[operator]
    return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)


def test_observe_many_writes_what_observe_writes() -> None:
    one_by_one = exposition(lambda h: [h.observe(v) for v in VALUES])
    at_once = exposition(lambda h: observe_many(h, VALUES))
    assert at_once == one_by_one
    assert b'h_bucket{le="0.001"} 3.0' in at_once and b'h_count 11.0' in at_once


def test_relative_differences_cap_what_is_not_finite() -> None:
    found = relative_differences([1.0, 0.0, -2.0, 1.0, 1.0], [1.1, 1e-12, -2.0, math.nan, math.inf])
    assert found[0] == 0.10000000000000009 and found[1] == 0.001 and found[2] == 0.0
    assert found[3] == found[4] == AGREEMENT_CAP


def test_a_round_counts_calls_and_agreement() -> None:
    served = Metrics()
    metrics = served.release
    metrics.ok_many("candidate", [0.002, 0.002, 0.03])
    metrics.compared_many([0.0, 0.5], 3, 1)
    text = generate_latest(served.registry).decode()
    assert 'serving_release_requests_total{outcome="ok",role="candidate"} 3.0' in text
    assert 'serving_release_seconds_bucket{le="0.0025",role="candidate"} 2.0' in text
    assert 'serving_release_agreement_count 2.0' in text
    assert 'serving_release_pairs_total{agree="true"} 3.0' in text
    assert 'serving_release_pairs_total{agree="false"} 1.0' in text

