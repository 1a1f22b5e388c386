"""The release gate's settings (params.yaml `release:`: min_requests, health, agreement, quality) and its errors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from include.ml.exceptions import PipelineError

Task = Literal["regression", "classification"]
DEFAULT_AGREEMENT = {"regression": 0.5, "classification": 0.8}


class EvidenceError(PipelineError):
    """The live evidence could not be gathered or judged (a server's /metrics, the capture, the labels)."""


class GateSettingsError(EvidenceError):
    """A release gate setting is out of range or unknown; the message names it."""


def _check(condition: bool, key: str, value: object, rule: str) -> None:
    if not condition:
        raise GateSettingsError(f"release.{key} is {value!r}; it must be {rule}")


@dataclass(frozen=True)
class HealthLimits:
    """Candidate vs champion on the same window: error rate may rise by at most `max_error_rate_increase`
    (absolute: 0.01 = one point), p99 may be at most max(champion p99 * max_p99_ratio, champion p99 + p99_slack_ms)."""

    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 5.0

    def __post_init__(self) -> None:
        _check(0 <= self.max_error_rate_increase <= 1, "health.max_error_rate_increase",
               self.max_error_rate_increase, "in [0, 1]")
        _check(self.max_p99_ratio >= 1, "health.max_p99_ratio", self.max_p99_ratio, ">= 1")
        _check(self.p99_slack_ms >= 0, "health.p99_slack_ms", self.p99_slack_ms, ">= 0")


@dataclass(frozen=True)
class AgreementLimits:
    """The share of paired predictions that agree must be at least `min` (None: 0.5 for regression, 0.8 for
    classification). Regression pairs agree when |candidate - champion| / max(|champion|, 1e-9) <= tolerance;
    classification pairs when the labels are equal."""

    min: float | None = None
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        _check(self.min is None or 0 <= self.min <= 1, "agreement.min", self.min, "in [0, 1] or null")
        _check(self.tolerance > 0, "agreement.tolerance", self.tolerance, "> 0")

    def minimum(self, task: Task) -> float:
        return DEFAULT_AGREEMENT[task] if self.min is None else self.min


@dataclass(frozen=True)
class QualityTest:
    """The always-valid test on the paired loss difference (sequential.py). `margin` is in the units of one
    observation: a per-row loss (squared error for rmse/r2, absolute error for mae, 0/1 error for accuracy, -log p
    for log_loss, the Brier term) or a block's metric difference (roc_auc, pr_auc, balanced_accuracy, f1_macro over
    `block_rows` pairs). The bounds are tightest at `target_rows` labelled pairs; no verdict before `min_rows`
    rows or `min_blocks` blocks (the variance estimate of fewer is too rough for the asymptotic bounds)."""

    alpha: float = 0.05
    margin: float = 0.0
    block_rows: int = 100
    target_rows: int = 1000
    min_rows: int = 30
    min_blocks: int = 5

    def __post_init__(self) -> None:
        _check(0 < self.alpha < 1, "quality.alpha", self.alpha, "in (0, 1)")
        _check(math.isfinite(self.margin), "quality.margin", self.margin, "a finite number")
        for key in ("block_rows", "target_rows", "min_rows", "min_blocks"):
            value = getattr(self, key)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 2, f"quality.{key}", value,
                   "a whole number >= 2")


@dataclass(frozen=True)
class ReleaseGate:
    """What each bake step is judged by. `min_requests`: health and agreement alarm only once the candidate has
    answered (or, for agreement, been paired) this many times in the window."""

    min_requests: int = 200
    health: HealthLimits = field(default_factory=HealthLimits)
    agreement: AgreementLimits = field(default_factory=AgreementLimits)
    quality: QualityTest = field(default_factory=QualityTest)

    def __post_init__(self) -> None:
        _check(isinstance(self.min_requests, int) and not isinstance(self.min_requests, bool)
               and self.min_requests >= 1, "min_requests", self.min_requests, "a whole number >= 1")

    @classmethod
    def from_mapping(cls, release: Mapping[str, Any]) -> ReleaseGate:
        """The gate of a params.yaml `release:` mapping; its other keys (strategy, shadow, canary, ...) are not the
        gate's and are ignored. A missing key keeps its default; an unknown key inside a section is refused."""
        parts: dict[str, Any] = {}
        for key, kind in (("health", HealthLimits), ("agreement", AgreementLimits), ("quality", QualityTest)):
            section = release.get(key) or {}
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(set(section) - known)
            if unknown:
                raise GateSettingsError(f"release.{key} has unknown key(s) {unknown}; known: {sorted(known)}")
            parts[key] = kind(**section)
        if "min_requests" in release:
            parts["min_requests"] = release["min_requests"]
        return cls(**parts)
