"""One look at a release step: health and agreement over the window, quality over the labelled pairs, one decision.

Any alarm aborts: a health alarm, an agreement alarm, or the sequential test finding the candidate worse. A step
with no alarm goes on baking; the caller decides what the end of the bake means (the quality verdict is one of
worse | not_worse | inconclusive | no_labels, and only `worse` is an alarm).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from include.release.evidence.agreement import judge_agreement
from include.release.evidence.health import judge_health
from include.release.evidence.pairs import LabelledPairs
from include.release.evidence.quality import QualityVerdict, judge_quality
from include.release.evidence.settings import ReleaseGate, Task
from include.release.evidence.window import FleetSnapshot, window


def _plain(value: Any) -> Any:
    """A JSON-able figure: NaN and infinities become None, numpy numbers plain ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _shown(form: str) -> Callable[[float | None], str]:
    return lambda value: "n/a" if value is None else form.format(value)


@dataclass(frozen=True)
class StepDecision:
    alarm: str | None  # why the release must abort, with its figures; None: no alarm
    quality: QualityVerdict
    figures: dict[str, Any]  # everything measured (JSON-able)

    def summary(self) -> str:
        f = self.figures
        rate, ms, agreement = _shown("{:.2%}"), _shown("{:.1f} ms"), _shown("{:.1%}")
        head = f"ALARM: {self.alarm}" if self.alarm else "no alarm"
        return (f"{head} | window {f['window_seconds']:.0f} s on {f['servers']} server(s): candidate "
                f"{f['candidate_calls']:.0f} calls, errors {rate(f['candidate_error_rate'])} vs "
                f"{rate(f['champion_error_rate'])}, p99 {ms(f['candidate_p99_ms'])} vs {ms(f['champion_p99_ms'])}; "
                f"agreement {agreement(f['agreement'])} of "
                f"{f['agreement_pairs']:.0f} pairs | {f['quality_summary']}")

    def xcom(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "quality": self.quality, "figures": self.figures}


def evaluate_step(gate: ReleaseGate, task: Task, metric: str, start: FleetSnapshot, now: FleetSnapshot,
                  pairs: LabelledPairs | None) -> StepDecision:
    """Judge the window from `start` to `now` (readings of every server's /metrics) and the labelled `pairs` (all
    since the release started: evidence accumulates over the steps; None when no labels are configured).
    Raises EvidenceError when the metric cannot be judged on these pairs (one the task lacks, or a probability
    metric without captured probabilities)."""
    counts = window(start, now)
    health = judge_health(counts, gate.health, gate.min_requests)
    agreement = judge_agreement(counts, task, gate.agreement, gate.min_requests)
    quality = judge_quality(pairs, metric, gate.quality)
    alarms = [health.alarm, agreement.alarm]
    if quality.verdict == "worse":
        alarms.append(f"{quality.describe()}: worse by more than quality.margin {gate.quality.margin:g} at "
                      f"alpha {gate.quality.alpha:g}")
    figures = {"window_seconds": counts.seconds, "servers": counts.servers, "restarted": list(counts.restarted),
               "missing": list(counts.missing), **health.figures(), **agreement.figures(), **quality.figures(),
               "quality_summary": quality.describe()}
    figures = _plain(figures)
    json.dumps(figures)  # a figure that is not JSON-able is a bug here, not in the caller's XCom
    return StepDecision("; ".join(a for a in alarms if a) or None, quality.verdict, figures)
