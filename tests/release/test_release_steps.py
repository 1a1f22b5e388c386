"""ml_release's task bodies on tiny inputs: the bake loop (a fake clock, the gate's decisions given), the evidence
record and its documents, and the MLflow side (a real SQLite store): the release run, the live evidence beside the
candidate's card, the version's tags. The servers' side runs in tests/dag_runs/test_ml_release.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from include.ml.configuration import ConfigurationManager
from include.ml.release_settings import ReleaseStep
from include.release import live_card, steps
from include.release.evidence.decision import StepDecision
from tests.support.project import CONFIG_DIR, outputs_env

STEP = ReleaseStep("canary_10", "canary", 0.1, 10.0)


FIGURES = {"window_seconds": 3.0, "servers": 1, "candidate_calls": 500, "candidate_error_rate": 0.0,
           "champion_error_rate": 0.0, "candidate_p99_ms": 4.0, "champion_p99_ms": 3.0, "agreement": 0.97,
           "agreement_pairs": 480, "quality": {"n": 40, "upper": 0.2}, "quality_summary": "rmse: inconclusive"}


def Decision(alarm: str | None = None, quality: str = "inconclusive", **figures: Any) -> StepDecision:
    """A decision of the gate with these figures (the rest as a quiet, healthy step has them)."""
    return StepDecision(alarm, quality, {**FIGURES, **figures})


class FakeClock:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """One registry for the module (registering is the slow part): champion v1 and v2 of the config's model."""
    from include.ml import registry, tracking
    from tests.support.bundles import register_toy_model

    base = tmp_path_factory.mktemp("release_steps")
    shutil.copytree(CONFIG_DIR, base / "config")
    config = ConfigurationManager(base / "config", env=outputs_env(base / "outputs")).config
    experiment = tracking.configure(config.mlflow)
    name = config.mlflow.registered_model_name
    assert (register_toy_model(name, experiment), register_toy_model(name, experiment, offset=3.0)) == ("1", "2")
    registry.promote(name, "1", "first")
    return config, experiment


@pytest.fixture
def config(store: tuple[Any, str]):
    """The module's config, with v2 the candidate and MLflow pointed at its store (as every task does)."""
    import mlflow

    from include.ml import registry, tracking

    config, _ = store
    tracking.configure(config.mlflow)
    registry.set_candidate(config.mlflow.registered_model_name, "2")
    assert mlflow.get_tracking_uri().startswith("sqlite:")
    return config


@pytest.fixture
def registered(config) -> tuple[str, str]:
    return "1", "2"


def test_a_release_needs_a_candidate_and_a_champion_apart_from_it(config, registered) -> None:
    from include.ml import registry

    name = config.mlflow.registered_model_name
    with pytest.raises(steps.ReleaseAlarm, match="already the champion"):
        steps.begin(config, "run-1", "1")
    registry.clear_candidate(name)
    with pytest.raises(steps.ReleaseAlarm, match="no candidate alias"):
        steps.begin(config, "run-1", None)


def test_a_bake_looks_every_poll_until_the_bake_is_over(config, registered, caplog) -> None:
    release = steps.begin(config, "run-2", None)  # the candidate alias: v2
    assert (release.version, release.champion) == ("2", "1")
    clock, looks = FakeClock(), []
    caplog.set_level("INFO", logger="include.release.steps")
    passed = steps.watch(release, STEP, 3.0, 200, lambda: looks.append(1) or Decision(), clock)
    assert clock.slept == [3.0, 3.0, 3.0, 1.0] and len(looks) == 4  # the last look when bake_seconds are over
    assert passed.step == "canary_10" and passed.figures["agreement"] == 0.97
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bake canary_10")]
    assert progress[0].startswith("bake canary_10: 3 of 10 s, look 1: no alarm | window 3 s on 1 server(s): candidate "
                                  "500 calls") and len(progress) == 4
    entry = live_card.read(Path(release.evidence))["steps"][0]
    assert (entry["outcome"], entry["polls"], entry["seconds"], entry["reason"]) == ("passed", 4, 10.0, None)

    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(release.mlflow_run_id, "canary_10.quality.upper")
    assert [(m.step, m.value) for m in history] == [(1, 0.2), (2, 0.2), (3, 0.2), (4, 0.2)]


def test_the_first_alarm_stops_the_bake_and_is_recorded(config, registered) -> None:
    release = steps.begin(config, "run-3", "2")
    decisions = iter([Decision(), Decision(alarm="health: candidate error rate 12.00% vs 0.00%")])
    clock = FakeClock()
    with pytest.raises(steps.ReleaseAlarm, match=r"v2 canary_10: health: candidate error rate 12.00% vs 0.00%"):
        steps.watch(release, STEP, 3.0, 200, lambda: next(decisions), clock)
    assert clock.now == 6.0  # stopped at the second look, not at the end of the bake
    record = live_card.read(Path(release.evidence))
    assert live_card.last_alarm(record) == "canary_10: health: candidate error rate 12.00% vs 0.00%"


def test_a_bake_with_too_little_traffic_fails_at_its_end(config, registered) -> None:
    release = steps.begin(config, "run-4", "2")
    quiet = Decision(candidate_calls=12)
    with pytest.raises(steps.ReleaseAlarm, match=r"handled 12 requests in the bake, fewer than release.min_requests"):
        steps.watch(release, STEP, 3.0, 200, lambda: quiet, FakeClock())
    worse = Decision(quality="worse", candidate_calls=900)
    assert "live quality: the candidate is worse" in steps.alarm_of(worse, 200, finished=False)
    assert steps.alarm_of(quiet, 200, finished=False) is None  # judged only once the bake is over


def test_the_end_of_a_release_goes_to_the_candidates_card_its_tags_and_the_release_run(config, registered) -> None:
    from mlflow.tracking import MlflowClient

    release = steps.begin(config, "run-5", "2")
    again = steps.begin(config, "run-5", "2")  # a retried begin keeps its run and record
    assert again.mlflow_run_id == release.mlflow_run_id
    steps.watch(release, STEP, 5.0, 1, lambda: Decision(), FakeClock())
    hostile = "alarm <script>alert(1)</script> | pipe"
    live_card.add_step(Path(release.evidence), {"step": "canary_50", "mode": "canary", "share": 0.5, "seconds": 3.0,
                                                "polls": 1, "outcome": "alarm", "reason": hostile, "decision": None})
    ended = steps._finish(release, "aborted", live_card.last_alarm(live_card.read(Path(release.evidence))), "1")
    assert ended.summary() == f"{config.mlflow.registered_model_name} v2 aborted: canary_50: {hostile} (champion: v1)"

    client = MlflowClient()
    name = config.mlflow.registered_model_name
    version = client.get_model_version(name, "2")
    assert (version.tags["release.outcome"], version.tags["release.run"]) == ("aborted", release.mlflow_run_id)
    assert version.tags["release.reason"] == f"canary_50: {hostile}"
    logged = {a.path for a in client.list_artifacts(version.run_id, "card")}
    assert logged == {"card/live_evidence.md", "card/live_evidence.html", "card/live_evidence.json"}
    run = client.get_run(release.mlflow_run_id)
    assert run.info.run_name.startswith("release-2-") and run.info.status == "FINISHED"
    assert (run.data.tags["outcome"], run.data.params["champion"], run.data.params["strategy"]) == \
        ("aborted", "1", "direct")
    assert run.data.params["steps"] == "shadow 100% 1800s, canary_10 10% 1800s, canary_50 10% 1800s".replace(
        "canary_50 10%", "canary_50 50%")
    assert (run.data.metrics["canary_10.passed"], run.data.metrics["canary_50.passed"]) == (1.0, 0.0)

    documents = Path(release.evidence).parent / "live_evidence"
    page = (documents / "live_evidence.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    markdown = (documents / "live_evidence.md").read_text()
    assert markdown.startswith(f"# Live evidence: {name} v2\n\n**Outcome: aborted: canary_50: alarm")
    assert "| canary_10 | canary | 10 % | 10 s | 2 | passed | inconclusive |" in markdown
    assert "- `quality.upper`: 0.2" in markdown
