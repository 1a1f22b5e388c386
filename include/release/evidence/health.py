"""Health: the candidate's error rate and p99 scoring time against the champion's, on the same window.

From serving_release_requests_total{role, outcome} (outcome ok | error) and the histogram
serving_release_seconds{role}. Alarms, once the candidate has `min_requests` calls in the window:
- error rate: candidate - champion > health.max_error_rate_increase;
- p99: candidate p99 > max(champion p99 * health.max_p99_ratio, champion p99 + health.p99_slack_ms).
p99 is read from the histogram's buckets as Prometheus' histogram_quantile does (linear within a bucket; in the
+Inf bucket, the largest finite bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from include.release.evidence.settings import HealthLimits
from include.release.evidence.window import Window

REQUESTS = "serving_release_requests_total"
ERRORS = "serving_release_errors_total"  # by role and reason (exception, input)
SECONDS = "serving_release_seconds"
ROLES = ("champion", "candidate")


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a histogram given as cumulative (upper bound, count) buckets, +Inf last; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower  # beyond the largest finite bound: that bound, as histogram_quantile says
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = (bound if math.isfinite(bound) else lower), count
    return lower


@dataclass(frozen=True)
class RoleHealth:
    calls: float
    errors: float
    p99_ms: float | None
    errors_by_reason: dict[str, float]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


def role_health(counts: Window, role: str) -> RoleHealth:
    ok, errors = counts.total(REQUESTS, role=role, outcome="ok"), counts.total(REQUESTS, role=role, outcome="error")
    p99 = quantile(counts.buckets(SECONDS, role=role), 0.99)
    reasons: dict[str, float] = {}
    for (name, labels), value in counts.counts.items():
        found = dict(labels)
        if name == ERRORS and found.get("role") == role and value:
            reasons[found.get("reason", "")] = reasons.get(found.get("reason", ""), 0.0) + value
    return RoleHealth(ok + errors, errors, None if p99 is None else p99 * 1000, reasons)


@dataclass(frozen=True)
class Health:
    champion: RoleHealth
    candidate: RoleHealth
    alarm: str | None
    judged: bool  # the candidate had min_requests calls in the window

    def figures(self) -> dict[str, Any]:
        return {f"{role}_{key}": value for role, part in (("champion", self.champion), ("candidate", self.candidate))
                for key, value in (("calls", part.calls), ("errors", part.errors), ("error_rate", part.error_rate),
                                   ("p99_ms", part.p99_ms), ("errors_by_reason", part.errors_by_reason))} \
            | {"health_judged": self.judged}


def _error_alarm(champion: RoleHealth, candidate: RoleHealth, limits: HealthLimits) -> str | None:
    champ, cand = champion.error_rate or 0.0, candidate.error_rate or 0.0
    if cand - champ > limits.max_error_rate_increase:
        reasons = ", ".join(f"{k or 'unknown'} {v:.0f}" for k, v in sorted(candidate.errors_by_reason.items()))
        return (f"candidate error rate {cand:.2%} ({candidate.errors:.0f} of {candidate.calls:.0f} calls"
                f"{f': {reasons}' if reasons else ''}) vs champion "
                f"{champ:.2%} ({champion.errors:.0f} of {champion.calls:.0f}): up {cand - champ:.2%}, over "
                f"health.max_error_rate_increase {limits.max_error_rate_increase:.2%}")
    return None


def _latency_alarm(champion: RoleHealth, candidate: RoleHealth, limits: HealthLimits) -> str | None:
    if champion.p99_ms is None or candidate.p99_ms is None:
        return None
    allowed = max(champion.p99_ms * limits.max_p99_ratio, champion.p99_ms + limits.p99_slack_ms)
    if candidate.p99_ms > allowed:
        return (f"candidate p99 {candidate.p99_ms:.1f} ms vs champion {champion.p99_ms:.1f} ms: over the allowed "
                f"{allowed:.1f} ms (x{limits.max_p99_ratio:g} or +{limits.p99_slack_ms:g} ms, health.max_p99_ratio / "
                "p99_slack_ms)")
    return None


def judge_health(counts: Window, limits: HealthLimits, min_requests: int) -> Health:
    """The two roles' health over the window, and the alarm (None when healthy or not yet judged)."""
    champion, candidate = role_health(counts, "champion"), role_health(counts, "candidate")
    if candidate.calls < min_requests:
        return Health(champion, candidate, None, False)
    alarms = [a for a in (_error_alarm(champion, candidate, limits), _latency_alarm(champion, candidate, limits)) if a]
    return Health(champion, candidate, "; ".join(alarms) or None, True)
