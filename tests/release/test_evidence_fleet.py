"""Health and agreement from two readings of the fleet's /metrics: the window, the alarms, and reading a server.

The expositions are made by prometheus_client itself with the serving release metrics' names, labels and buckets
(docs/serving.md), so the parser sees what a server writes.
"""

from __future__ import annotations

import http.server
import threading
from typing import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from include.release.evidence import (
    AgreementLimits,
    EvidenceError,
    FleetSnapshot,
    GateSettingsError,
    HealthLimits,
    MetricsUnavailable,
    ReleaseGate,
    evaluate_step,
    read_fleet,
)
from include.release.evidence.agreement import judge_agreement, share_at_most
from include.release.evidence.health import judge_health, quantile
from include.release.evidence.window import parse_exposition, window
from serving.metrics import LATENCY_BUCKETS

AGREEMENT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # serving/metrics.py's


def exposition(calls: dict[str, tuple[int, int, float]], relative: Sequence[float] = (),
               labels_agree: tuple[int, int] = (0, 0)) -> str:
    """A server's /metrics: per role (ok calls, error calls, seconds each call took); the regression agreement
    values; the classification pairs (agreeing, not)."""
    registry = CollectorRegistry()
    requests = Counter("serving_release_requests", "calls", ["role", "outcome"], registry=registry)
    reasons = Counter("serving_release_errors", "failed calls", ["role", "reason"], registry=registry)
    seconds = Histogram("serving_release_seconds", "time", ["role"], buckets=LATENCY_BUCKETS, registry=registry)
    agreement = Histogram("serving_release_agreement", "relative", buckets=AGREEMENT_BUCKETS, registry=registry)
    pairs = Counter("serving_release_pairs", "pairs", ["agree"], registry=registry)
    Counter("serving_requests", "not a release metric", registry=registry).inc(7)
    for role, (ok, errors, took) in calls.items():
        requests.labels(role, "ok").inc(ok)
        requests.labels(role, "error").inc(errors)
        reasons.labels(role, "exception").inc(errors)
        for _ in range(ok + errors):
            seconds.labels(role).observe(took)
    for value in relative:
        agreement.observe(value)
    pairs.labels("true").inc(labels_agree[0])
    pairs.labels("false").inc(labels_agree[1])
    return generate_latest(registry).decode()


def fleet(at: float, **servers: str) -> FleetSnapshot:
    return FleetSnapshot(at, {url: parse_exposition(text) for url, text in servers.items()})


EMPTY = exposition({})
HEALTHY = {"champion": (900, 9, 0.004), "candidate": (300, 3, 0.004)}


def test_the_window_sums_the_growth_of_every_server_and_survives_a_restart() -> None:
    start = fleet(100.0, a=exposition({"champion": (1000, 0, 0.004)}), b=exposition({"champion": (50, 0, 0.004)}))
    # a grew by 500 champion calls; b restarted (its counter went down) and has 20 since; c is new
    now = fleet(160.0, a=exposition({"champion": (1500, 0, 0.004)}), b=exposition({"champion": (20, 0, 0.004)}),
                c=exposition({"champion": (5, 0, 0.004)}))
    counts = window(start, now)
    assert counts.total("serving_release_requests_total", role="champion") == 525
    assert counts.restarted == ("b",) and counts.seconds == 60.0 and counts.servers == 3
    assert counts.total("serving_requests_total") == 0  # only the release metrics are kept
    assert window(start, fleet(160.0, a=EMPTY)).missing == ("b",)


def test_a_snapshot_survives_json() -> None:
    snapshot = fleet(5.0, a=exposition(HEALTHY, relative=[0.01, 0.2]))
    assert FleetSnapshot.from_json(snapshot.to_json()) == snapshot
    with pytest.raises(EvidenceError, match="not a fleet snapshot"):
        FleetSnapshot.from_json({"instances": {}})


def test_histogram_quantile_and_share_as_prometheus_reads_buckets() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.95) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile([(0.01, 0.0), (float("inf"), 10.0)], 0.99) == 0.01  # in +Inf: the largest finite bound
    assert quantile([(float("inf"), 0.0)], 0.99) is None
    assert share_at_most(buckets, 0.1) == pytest.approx(0.9)
    assert share_at_most(buckets, 0.055) == pytest.approx((50 + 40 * 0.5) / 100)


def test_health_alarms_on_the_error_rate_only_once_the_candidate_has_min_requests() -> None:
    start = fleet(0.0, a=EMPTY, b=EMPTY)
    bad = {"champion": (990, 10, 0.004), "candidate": (95, 5, 0.004)}  # 1 % vs 5 % on each server
    counts = window(start, fleet(60.0, a=exposition(bad), b=exposition(bad)))
    judged = judge_health(counts, HealthLimits(), min_requests=200)
    assert judged.judged and judged.candidate.calls == 200 and judged.candidate.error_rate == pytest.approx(0.05)
    assert judged.alarm and "error rate 5.00%" in judged.alarm and "champion 1.00%" in judged.alarm
    assert judged.figures()["candidate_errors_by_reason"] == {"exception": 10}
    assert judge_health(counts, HealthLimits(), min_requests=201).alarm is None  # too few calls to judge
    assert judge_health(counts, HealthLimits(max_error_rate_increase=0.05), min_requests=200).alarm is None


def test_health_alarms_on_p99_beyond_ratio_and_slack() -> None:
    start = fleet(0.0, a=EMPTY)
    slow = window(start, fleet(60.0, a=exposition({"champion": (500, 0, 0.02), "candidate": (500, 0, 0.2)})))
    alarm = judge_health(slow, HealthLimits(), 200).alarm
    assert alarm and "p99" in alarm and "allowed" in alarm
    # 4 ms -> 8 ms: twice the champion's p99 but within its 5 ms slack, so no alarm
    close = window(start, fleet(60.0, a=exposition({"champion": (500, 0, 0.004), "candidate": (500, 0, 0.008)})))
    assert judge_health(close, HealthLimits(), 200).alarm is None
    assert judge_health(close, HealthLimits(p99_slack_ms=0.0), 200).alarm is not None


def test_agreement_alarms_below_the_minimum_for_each_task() -> None:
    start = fleet(0.0, a=EMPTY)
    apart = window(start, fleet(60.0, a=exposition({}, relative=[0.05] * 100 + [0.5] * 200)))
    judged = judge_agreement(apart, "regression", AgreementLimits(), 200)
    assert judged.share == pytest.approx(1 / 3) and judged.alarm and "below agreement.min 50%" in judged.alarm
    close = window(start, fleet(60.0, a=exposition({}, relative=[0.005] * 300)))
    assert judge_agreement(close, "regression", AgreementLimits(), 200).alarm is None
    labels = window(start, fleet(60.0, a=exposition({}, labels_agree=(150, 100))))
    assert judge_agreement(labels, "classification", AgreementLimits(), 200).alarm  # 60 % < 80 %
    assert judge_agreement(labels, "classification", AgreementLimits(min=0.5), 200).alarm is None
    assert judge_agreement(labels, "classification", AgreementLimits(), 251).alarm is None  # too few pairs


def test_a_step_decision_without_labels_has_every_figure() -> None:
    start = fleet(0.0, a=EMPTY)
    now = fleet(30.0, a=exposition(HEALTHY, relative=[0.01] * 300))
    decision = evaluate_step(ReleaseGate(), "regression", "rmse", start, now, None)
    assert decision.alarm is None and decision.quality == "no_labels"
    assert decision.figures["candidate_calls"] == 303 and decision.figures["agreement"] == pytest.approx(1.0)
    assert "no alarm" in decision.summary() and "no labels configured" in decision.summary()
    bad = fleet(30.0, a=exposition({"champion": (900, 0, 0.004), "candidate": (200, 100, 0.004)}))
    assert "ALARM: candidate error rate" in evaluate_step(ReleaseGate(), "regression", "rmse", start, bad,
                                                           None).summary()


def test_settings_from_params_and_their_refusals() -> None:
    gate = ReleaseGate.from_mapping({"strategy": "progressive", "min_requests": 50, "health": {"p99_slack_ms": 2},
                                     "agreement": {"min": None}, "quality": {"alpha": 0.01, "block_rows": 50}})
    assert (gate.min_requests, gate.health.p99_slack_ms, gate.quality.alpha, gate.quality.block_rows) == \
        (50, 2, 0.01, 50)
    assert gate.agreement.minimum("classification") == 0.8 and gate.agreement.minimum("regression") == 0.5
    with pytest.raises(GateSettingsError, match="release.quality has unknown key"):
        ReleaseGate.from_mapping({"quality": {"alhpa": 0.1}})
    with pytest.raises(GateSettingsError, match=r"release.quality.alpha is 1.5; it must be in \(0, 1\)"):
        ReleaseGate.from_mapping({"quality": {"alpha": 1.5}})


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = 200 if self.path == "/metrics" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(self.body if status == 200 else b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_url() -> Iterator[str]:
    _Metrics.body = exposition(HEALTHY).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_read_fleet_reads_each_server_and_names_one_it_cannot(metrics_url: str) -> None:
    snapshot = read_fleet([metrics_url], timeout=5)
    assert window(FleetSnapshot(0.0, {}), snapshot).total("serving_release_requests_total", role="candidate") == 303
    with pytest.raises(MetricsUnavailable, match="127.0.0.1:9/metrics could not be read"):
        read_fleet([metrics_url, "http://127.0.0.1:9"], timeout=2)
    _Metrics.body = b"not { an exposition"
    with pytest.raises(MetricsUnavailable, match="not a Prometheus text exposition"):
        read_fleet([metrics_url], timeout=5)
