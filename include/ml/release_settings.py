"""params.yaml's `release:` section as typed, frozen models: how a new version reaches all traffic.

`strategy: direct` (the default) is the behaviour before releases existed: evaluate makes a better model the
champion and ml_pipeline deploys it to every server. `strategy: progressive` makes it the `candidate` instead,
and the ml_release DAG shadows it, then answers growing shares of traffic with it (canary steps), each step baked
for a while and gated on live health, agreement with the champion and, once labels arrive, live quality; any
alarm aborts (docs/airflow.md#ml_release, docs/live-evidence.md). Strict and closed like every config model
(include/ml/frozen.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The task's default for agreement.min when the section leaves it out: regression compares |candidate - champion|
# relative to the champion's prediction (a pair agrees within agreement.tolerance), classification the labels.
AGREEMENT_DEFAULTS = {"regression": 0.5, "classification": 0.8}


@dataclass(frozen=True)
class ReleaseStep:
    """One step of a release as the DAG runs it: shadow or a canary share, then a bake of bake_seconds."""

    name: str  # shadow, canary_10: task ids, log lines, the evidence
    mode: Literal["shadow", "canary"]
    share: float  # a fraction of the requests: shadow's sample, a canary's percent / 100
    bake_seconds: float


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ShadowStep(_Frozen):
    """The candidate scores `sample` of the requests off the request path; clients always get the champion."""

    sample: float = Field(1.0, gt=0, le=1)
    bake_seconds: float = Field(1800.0, gt=0)


class CanaryStep(_Frozen):
    """The candidate answers `percent` % of the requests (sticky by the client key header)."""

    percent: float = Field(gt=0, lt=100)  # 100 % is the promotion, not a step
    bake_seconds: float = Field(1800.0, gt=0)

    @property
    def name(self) -> str:
        """The step's name in task ids, logs and the evidence: canary_10, canary_2_5."""
        return "canary_" + f"{self.percent:g}".replace(".", "_")


class HealthGate(_Frozen):
    """Candidate vs champion on the same window of every server's /metrics."""

    max_error_rate_increase: float = Field(0.01, ge=0, le=1)  # candidate error rate - champion's
    max_p99_ratio: float = Field(1.5, ge=1)  # alarm when candidate p99 > max(champion p99 x ratio,
    p99_slack_ms: float = Field(5.0, ge=0)  # champion p99 + slack)


class AgreementGate(_Frozen):
    """The share of paired requests on which candidate and champion agree."""

    min: float | None = Field(None, ge=0, le=1)  # None: AGREEMENT_DEFAULTS for the task
    tolerance: float = Field(0.1, gt=0)  # regression: |cand - champ| / max(|champ|, 1e-9) at most this agrees


class QualityGate(_Frozen):
    """The always-valid sequential test on the paired loss difference (candidate - champion) of labelled rows."""

    alpha: float = Field(0.05, gt=0, lt=1)  # the chance of a false abort, however often it is looked at
    margin: float = Field(0.0, ge=0)  # how much worse (in loss units) still counts as not worse
    block_rows: int = Field(100, ge=10)  # roc_auc, pr_auc: pairs per block (one observation of the test)


class ReleasePlan(_Frozen):
    """The `release:` section."""

    strategy: Literal["direct", "progressive"] = "direct"
    shadow: ShadowStep | None = ShadowStep()  # null: no shadow step
    canary: tuple[CanaryStep, ...] = Field(
        (CanaryStep(percent=10), CanaryStep(percent=50)), strict=False)
    poll_seconds: float = Field(60.0, gt=0)  # a bake looks at the evidence this often
    approval: bool = False  # a person approves (Airflow HITL) before the candidate takes 100 %
    approval_timeout_hours: float = Field(24.0, gt=0)  # unanswered by then: rejected (the release aborts)
    min_requests: int = Field(200, ge=1)  # the candidate's calls before health is judged; a bake ending with
    # fewer fails: too little evidence
    health: HealthGate = HealthGate()
    agreement: AgreementGate = AgreementGate()
    quality: QualityGate = QualityGate()

    @model_validator(mode="after")
    def _steps(self) -> ReleasePlan:
        if self.shadow is None and not self.canary:
            raise ValueError("a release needs at least one step: a shadow step or a canary step")
        percents = [step.percent for step in self.canary]
        if any(later <= earlier for earlier, later in zip(percents, percents[1:])):
            raise ValueError(f"canary percents must grow step by step, got {', '.join(f'{p:g}' for p in percents)}")
        return self

    def steps(self) -> tuple[ReleaseStep, ...]:
        """The steps in order: the shadow step (if any), then the canary steps."""
        shadow = (ReleaseStep("shadow", "shadow", self.shadow.sample, self.shadow.bake_seconds),) if self.shadow else ()
        return (*shadow, *(ReleaseStep(s.name, "canary", s.percent / 100, s.bake_seconds) for s in self.canary))

    def agreement_min(self, task: str) -> float:
        return self.agreement.min if self.agreement.min is not None else AGREEMENT_DEFAULTS[task]
