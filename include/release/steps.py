"""The task bodies of the ml_release DAG: begin a release, start a step, bake it under the live-evidence gate,
promote, abort. Plain Python (no Airflow): each returns a typed result with `.summary()` and `.xcom()`.

A release of candidate version V against the champion C is: `begin` (checks, the MLflow run
"release-<V>-<time>", the evidence record), then for each step of params.yaml's `release:` (shadow, canary 10 %,
...) `start_step` (include.release.progressive.start: the signed pointer names V with the step's mode and share)
and `bake_step` (every poll_seconds until bake_seconds: the fleet's /metrics since the step began and the labelled
pairs since the release began, judged by include.release.evidence; a progress line per poll; an alarm raises
ReleaseAlarm at once), then `promote` (V becomes champion at 100 %) or, when anything failed, `abort` (C takes
100 % again). Every decision with its figures goes to the release's MLflow run, to the evidence record and, at the
end, to the candidate's model card as live evidence (include/release/live_card.py) and its version's tags.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from include.ml import artifacts, registry, tracking
from include.ml.entities import PipelineConfig
from include.ml.exceptions import PipelineError
from include.ml.release_settings import ReleaseStep
from include.release import live_card

log = logging.getLogger(__name__)

STAGE = "release"  # <artifacts_root>/<run id>/release/


class ReleaseAlarm(PipelineError):
    """The live evidence refused the candidate (or a step could not run): the release is aborted."""


@dataclass(frozen=True)
class Clock:
    """What a bake waits with; tests give it a fake one."""

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Release:
    """A release under way: what every task after `begin` receives (as its XCom dict)."""

    model_name: str
    version: str
    champion: str
    mlflow_run_id: str
    mlflow_run_url: str
    evidence: str  # the record's path
    started_at: str

    def summary(self) -> str:
        return (f"release of {self.model_name} v{self.version} against champion v{self.champion} began "
                f"(MLflow run {self.mlflow_run_url}; evidence {self.evidence})")

    def xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> Release:
        return cls(**{k: value[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StepOutcome:
    """A started step, or a step that baked without an alarm."""

    model_name: str
    version: str
    step: str
    mode: str
    share: float
    text: str
    mlflow_run_url: str
    figures: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return self.text

    def xcom(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.text}


@dataclass(frozen=True)
class ReleaseEnd:
    model_name: str
    version: str
    champion: str  # the champion after the release
    outcome: str  # promoted | aborted
    reason: str
    mlflow_run_url: str

    def summary(self) -> str:
        return f"{self.model_name} v{self.version} {self.outcome}: {self.reason} (champion: v{self.champion})"

    def xcom(self) -> dict[str, Any]:
        return asdict(self)


# --- the tasks ------------------------------------------------------------------------------------------------------

def begin(config: PipelineConfig, run_id: str, version: str | None) -> Release:
    """Check that `version` (default: the registry's `candidate` alias) can be released against the champion, open
    the release's MLflow run and its evidence record."""
    import mlflow

    experiment = tracking.configure(config.mlflow)
    name = config.mlflow.registered_model_name
    version = version or registry.candidate_version(name)
    champion = registry.champion_version(name)
    if not version:
        raise ReleaseAlarm(f"nothing to release: no version given and {name} has no candidate alias")
    if champion is None:
        raise ReleaseAlarm(f"{name} has no champion to release v{version} against; deploy a first version directly")
    if champion == version:
        raise ReleaseAlarm(f"v{version} is already the champion of {name}")
    mlflow.tracking.MlflowClient().get_model_version(name, version)  # fails clearly if it does not exist
    path = artifacts.stage_dir(config.artifacts_root, run_id, STAGE) / live_card.EVIDENCE
    if path.is_file() and (record := live_card.read(path)).get("version") == version and not record["outcome"]:
        run_id_ml = record["mlflow_run_id"]  # a retried begin keeps its run
    else:
        run_id_ml = _open_run(config, experiment, run_id, name, version, champion)
    url = tracking.run_url(config.mlflow, experiment, run_id_ml)
    record = live_card.open_record(path, {"model_name": name, "version": version, "champion": champion,
                                          "started_at": live_card.now(), "mlflow_run_id": run_id_ml,
                                          "mlflow_run_url": url, "plan": config.release.model_dump(mode="json")})
    release = Release(name, version, champion, run_id_ml, url, str(path), record["started_at"])
    log.info("release: %s", release.summary())
    return release


def start_step(config: PipelineConfig, release: Release, step: ReleaseStep) -> StepOutcome:
    """Put the candidate on every server in the step's mode and share (a failure is recorded, then raised)."""
    from include.release import progressive

    tracking.configure(config.mlflow)
    began = live_card.now()
    try:
        state = progressive.start(config, release.version, step.mode, step.share)
    except Exception as exc:
        _record_step(release, step, began, 0.0, 0, "failed", f"could not start: {exc}", None)
        raise
    text = f"{step.name}: {state.summary()}"
    log.info("release: %s", text)
    return StepOutcome(release.model_name, release.version, step.name, step.mode, step.share, text,
                       release.mlflow_run_url, {"state": state.xcom()})


def bake_step(config: PipelineConfig, release: Release, step: ReleaseStep, clock: Clock = Clock()) -> StepOutcome:
    """Watch the step for bake_seconds, judging the evidence every poll_seconds; ReleaseAlarm on the first alarm."""
    from include.release import progressive
    from include.release.evidence.window import read_fleet

    tracking.configure(config.mlflow)
    fleet = progressive.status(config).urls
    opened = read_fleet(fleet)  # the step's window starts now: the candidate runs in the step's mode already
    return watch(release, step, config.release.poll_seconds, config.release.min_requests,
                 lambda: judge(config, release, opened, read_fleet(fleet)), clock)


def watch(release: Release, step: ReleaseStep, poll_seconds: float, min_requests: int, look: Callable[[], Any],
          clock: Clock = Clock()) -> StepOutcome:
    """The bake loop: `look()` (a StepDecision) every poll_seconds until bake_seconds have passed, a progress line
    and the figures as MLflow metrics each time; the first alarm is recorded and raised as ReleaseAlarm."""
    began_at, began, polls = live_card.now(), clock.monotonic(), 0
    while True:
        clock.sleep(max(0.0, min(poll_seconds, step.bake_seconds - (clock.monotonic() - began))))
        elapsed = clock.monotonic() - began
        polls += 1
        decision = look()
        log.info("bake %s: %.0f of %.0f s, look %d: %s", step.name, elapsed, step.bake_seconds, polls,
                 decision.summary())
        _log_metrics(release, step, decision.figures, polls)
        reason = alarm_of(decision, min_requests, finished=elapsed >= step.bake_seconds)
        if reason:
            _record_step(release, step, began_at, elapsed, polls, "alarm", reason, decision)
            log.error("bake %s: ALARM: %s", step.name, reason)
            raise ReleaseAlarm(f"{release.model_name} v{release.version} {step.name}: {reason}")
        if elapsed >= step.bake_seconds:
            break
    _record_step(release, step, began_at, elapsed, polls, "passed", None, decision)
    text = f"{step.name} passed after {elapsed:.0f} s and {polls} looks: {decision.summary()}"
    log.info("release: %s", text)
    return StepOutcome(release.model_name, release.version, step.name, step.mode, step.share, text,
                       release.mlflow_run_url, decision.figures)


def judge(config: PipelineConfig, release: Release, opened: Any, now: Any) -> Any:
    """The gate's decision (include.release.evidence) on the window opened..now of the fleet's /metrics and on
    every labelled pair since the release began (evidence accumulates over the steps)."""
    from datetime import datetime, timezone

    from include.release.evidence.decision import evaluate_step
    from include.release.evidence.pairs import labelled_pairs
    from include.release.evidence.settings import ReleaseGate

    gate = ReleaseGate.from_mapping(config.release.model_dump())
    pairs = labelled_pairs(config.monitoring, config.schema, release.model_name, release.champion, release.version,
                           datetime.fromisoformat(release.started_at), datetime.now(timezone.utc))
    return evaluate_step(gate, config.schema.task, config.promotion.metric, opened, now, pairs)


def alarm_of(decision: Any, min_requests: int, finished: bool) -> str | None:
    """Why a look stops the release: the gate's alarm, a candidate the sequential test finds worse, or (once the
    bake is over) too little traffic to have judged it."""
    if decision.alarm:
        return str(decision.alarm)
    if decision.quality == "worse":
        return f"live quality: the candidate is worse than the champion ({decision.summary()})"
    requests = decision.figures.get("candidate_calls")
    if finished and requests is not None and requests < min_requests:
        return (f"too little evidence: the candidate handled {requests} requests in the bake, fewer than "
                f"release.min_requests ({min_requests})")
    return None


def promote(config: PipelineConfig, release: Release) -> ReleaseEnd:
    """Every step passed (and a person approved, if asked): the candidate becomes the champion at 100 %."""
    from include.release import progressive

    tracking.configure(config.mlflow)
    state = progressive.promote(config)
    passed = [s["step"] for s in live_card.read(Path(release.evidence))["steps"] if s["outcome"] == "passed"]
    reason = f"every step passed ({', '.join(passed)}); {state.summary()}"
    return _finish(release, "promoted", reason, release.version)


def confirm(config: PipelineConfig, release: Release) -> StepOutcome:
    """After promote: the store's pointer names the candidate alone, and every server answers as it names."""
    from include.ml.exceptions import DeploymentError
    from include.release import progressive

    status = progressive.status(config)
    if (status.champion, status.candidate) != (release.version, None) or status.drifted():
        raise DeploymentError(f"after promoting v{release.version}: {status.summary()}")
    text = f"v{release.version} serves 100 % of the traffic: {status.summary()}"
    log.info("release: %s", text)
    return StepOutcome(release.model_name, release.version, "confirm", "champion", 1.0, text,
                       release.mlflow_run_url, {"servers": len(status.urls)})


def abort(config: PipelineConfig, release: Release | None, failed_tasks: list[str]) -> ReleaseEnd | None:
    """Something failed: the champion takes 100 % again; the reason is the recorded alarm, else the failed tasks."""
    from include.release import progressive

    if release is None:
        log.info("release: no release began (%s failed); nothing to abort", ", ".join(failed_tasks) or "begin")
        return None
    tracking.configure(config.mlflow)
    record = live_card.read(Path(release.evidence))
    reason = live_card.last_alarm(record) or f"task(s) {', '.join(failed_tasks) or 'unknown'} failed"
    state = progressive.abort(config, reason)  # first the traffic, then the paperwork
    log.error("release: ABORTED %s v%s: %s; %s", release.model_name, release.version, reason, state.summary())
    return _finish(release, "aborted", reason, release.champion)


# --- recording --------------------------------------------------------------------------------------------------

def _open_run(config: PipelineConfig, experiment: str, run_id: str, name: str, version: str, champion: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run = client.create_run(experiment, run_name=f"release-{version}-{stamp}", tags={
        "release.model": name, "release.version": version, "release.champion": champion,
        "pipeline_run_id": artifacts.safe_run_id(run_id), "pipeline_stage": STAGE})
    plan = config.release
    params = {"strategy": plan.strategy, "version": version, "champion": champion,
              "steps": ", ".join(f"{s.name} {100 * s.share:g}% {s.bake_seconds:g}s" for s in plan.steps()),
              "poll_seconds": plan.poll_seconds, "approval": plan.approval, "min_requests": plan.min_requests}
    for key, value in {**params, **_settings(plan)}.items():
        client.log_param(run.info.run_id, key, str(value))
    return run.info.run_id


def _settings(plan: Any) -> dict[str, Any]:
    return {f"{group}.{key}": value for group in ("health", "agreement", "quality")
            for key, value in getattr(plan, group).model_dump().items()}


def _log_metrics(release: Release, step: ReleaseStep, figures: dict[str, Any], look: int) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    stamp = int(time.time() * 1000)
    metrics = [Metric(f"{step.name}.{key}", value, stamp, look)
               for key, value in live_card.numeric_figures(figures).items()]
    if metrics:
        MlflowClient().log_batch(release.mlflow_run_id, metrics=metrics[:1000])


def _record_step(release: Release, step: ReleaseStep, began_at: str, seconds: float, polls: int, outcome: str,
                 reason: str | None, decision: Any) -> None:
    live_card.add_step(Path(release.evidence), {
        "step": step.name, "mode": step.mode, "share": step.share, "bake_seconds": step.bake_seconds,
        "started_at": began_at, "ended_at": live_card.now(), "seconds": round(seconds, 1), "polls": polls,
        "outcome": outcome, "reason": reason,
        "decision": None if decision is None else {"alarm": decision.alarm, "quality": decision.quality,
                                                   "figures": decision.figures, "summary": decision.summary()}})


def _finish(release: Release, outcome: str, reason: str, champion: str) -> ReleaseEnd:
    """Close the record; the documents to the candidate's card and the release run; tags on version and run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    path = Path(release.evidence)
    record = live_card.close(path, outcome, reason)
    documents = live_card.write_documents(record, path.parent / "live_evidence")
    training_run = client.get_model_version(release.model_name, release.version).run_id
    for document in documents:
        client.log_artifact(training_run, str(document), "card")  # beside model_card.md: not in the bundle
        client.log_artifact(release.mlflow_run_id, str(document))
    for key, value in (("release.outcome", outcome), ("release.reason", reason[:5000]),
                       ("release.run", release.mlflow_run_id)):
        client.set_model_version_tag(release.model_name, release.version, key, value)
    client.set_tag(release.mlflow_run_id, "outcome", outcome)
    client.set_tag(release.mlflow_run_id, "reason", reason[:5000])
    for step in record["steps"]:
        client.log_metric(release.mlflow_run_id, f"{step['step']}.passed", float(step["outcome"] == "passed"))
    client.set_terminated(release.mlflow_run_id, "FINISHED")
    end = ReleaseEnd(release.model_name, release.version, champion, outcome, reason, release.mlflow_run_url)
    log.info("release: %s", end.summary())
    return end
