"""The live-evidence gate of a progressive release: health, agreement and quality of a candidate against the
champion, on live traffic, one decision per look (docs/live-evidence.md: the method, formulas and figures).

API (what the ml_release DAG calls; everything else is internal):

    from include.release.evidence import (ReleaseGate, FleetSnapshot, read_fleet, labelled_pairs, evaluate_step,
                                          StepDecision, LabelledPairs, EvidenceError, MetricsUnavailable)

    gate = ReleaseGate.from_mapping(params["release"])          # or ReleaseGate(min_requests=..., health=HealthLimits(
                                                                #   ...), agreement=AgreementLimits(...),
                                                                #   quality=QualityTest(...)); frozen dataclasses
    start = read_fleet(status_urls, timeout=10.0) -> FleetSnapshot   # each server's /metrics, at the step's start
    ...                                                              # FleetSnapshot.to_json() / .from_json(d): XCom
    now = read_fleet(status_urls)
    pairs = labelled_pairs(sources: MonitoringSources, schema: SchemaConfig, model_name: str,
                           champion: str | None, candidate: str, start: datetime, end: datetime)
            -> LabelledPairs | None      # None: monitoring.ground_truth_uri unset; start = the release's start
    decision = evaluate_step(gate, task: "regression" | "classification", metric: str (promotion.metric),
                             start, now, pairs) -> StepDecision
    decision.alarm: str | None      # abort when not None: the reason, with its figures
    decision.quality: "worse" | "not_worse" | "inconclusive" | "no_labels"
    decision.figures: dict          # JSON-able: window, per-role calls/errors/p99, agreement, the sequence's bounds
    decision.summary() -> str       # one line for the task log;  decision.xcom() -> dict

ReleaseGate defaults (params.yaml release:): min_requests 200; health {max_error_rate_increase 0.01,
max_p99_ratio 1.5, p99_slack_ms 5}; agreement {min None (0.5 regression, 0.8 classification), tolerance 0.1};
quality {alpha 0.05, margin 0.0, block_rows 100, target_rows 1000, min_rows 30, min_blocks 5}.

Errors: EvidenceError (base; a PipelineError), MetricsUnavailable (a server's /metrics), GateSettingsError (a
setting out of range). Modules: settings, window (/metrics readings and their difference), health, agreement,
pairs (capture pairs + labels), sequential (the confidence sequence), quality (paired losses), decision.
"""

from include.release.evidence.decision import StepDecision, evaluate_step
from include.release.evidence.pairs import LabelledPairs, labelled_pairs
from include.release.evidence.settings import (
    AgreementLimits,
    EvidenceError,
    GateSettingsError,
    HealthLimits,
    QualityTest,
    ReleaseGate,
)
from include.release.evidence.window import FleetSnapshot, MetricsUnavailable, read_fleet

__all__ = ["AgreementLimits", "EvidenceError", "FleetSnapshot", "GateSettingsError", "HealthLimits", "LabelledPairs",
           "MetricsUnavailable", "QualityTest", "ReleaseGate", "StepDecision", "evaluate_step", "labelled_pairs",
           "read_fleet"]
