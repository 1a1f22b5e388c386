"""ml_release through the real scheduler, on the stack's real prediction server, under labelled live traffic.

A forced ml_pipeline run first makes a fresh champion (elasticnet) and deploys it. Then:

1. A deliberately bad candidate: the same model trained on the quality + 0.5 (every prediction half a point high; it
   agrees with the champion within the agreement tolerance, so only the labels can tell), registered by hand and
   released with ml_release's trigger form. Once labelled pairs arrive, the sequential test finds it worse and the
   shadow bake raises the alarm: abort puts the champion back alone (100 %), the run fails, the reason is in the
   bake's log and in live_evidence.md beside the candidate's card.
2. A better candidate (a random forest) from ml_pipeline itself under `release.strategy: progressive`: evaluate
   makes it the candidate, deploy is skipped, signal_candidate's Asset event starts ml_release, which shadows it,
   canaries it at 10 % and 50 % and promotes it, with its live evidence recorded.

All the while a client sends real wines with request ids whose true quality is in the labels file (the delayed
labels, monitoring.ground_truth_uri): not one request may fail. The stack's release steps bake for seconds
(tests/support/stacks.py).
"""

from __future__ import annotations

import csv
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

from tests.support.network import get_json
from tests.support.project import WINE_CSV, edit_yaml
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

MODEL = "wine-quality"
OFFSET = 0.5  # the bad candidate's bias, in quality points
RELEASE_TIMEOUT = 300


class LabelledTraffic:
    """A client posting real wines one row at a time with their own request ids (whose labels are known) and a
    client key, counting (status, answering version) and remembering which version answered each key."""

    def __init__(self, url: str, wines: pd.DataFrame, labels: Path) -> None:
        self.url, self.rows = url, wines.drop(columns="quality").to_dict(orient="records")
        self.ids = [uuid.uuid4().hex for _ in range(len(wines))]
        with labels.open("w", newline="") as out:  # the delayed labels, there before the requests
            writer = csv.writer(out)
            writer.writerow(["request_id", "row", "quality"])
            writer.writerows([request_id, 0, quality] for request_id, quality in zip(self.ids, wines["quality"]))
        self.outcomes: Counter = Counter()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        while not self._stop.is_set() and self.sent < len(self.ids):
            index = self.sent
            self.sent += 1
            request = urllib.request.Request(f"{self.url}/predict", json.dumps(self.rows[index]).encode(), {
                "Content-Type": "application/json", "X-Request-ID": self.ids[index],
                "X-Client-Key": f"client-{index % 50}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.outcomes[(response.status, response.headers["X-Model-Version"])] += 1
            except urllib.error.HTTPError as exc:
                self.outcomes[(exc.code, None)] += 1
            except OSError as exc:
                self.outcomes[(type(exc).__name__, None)] += 1
            time.sleep(0.01)

    def __enter__(self) -> LabelledTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def failures(self) -> Counter:
        return Counter({key: n for key, n in self.outcomes.items() if key[0] != 200})

    def answered(self) -> Counter:
        return Counter({version: n for (status, version), n in self.outcomes.items() if status == 200})


@contextmanager
def release_settings(stack: Any, labels: Path) -> Iterator[None]:
    """The stack's labels (monitoring.ground_truth_uri) for the test's traffic; the config files restored after."""
    config_dir = Path(stack.env["MLOPS_CONFIG_DIR"])
    saved = {name: (config_dir / name).read_text() for name in ("config.yaml", "params.yaml")}
    edit_yaml(config_dir / "config.yaml", lambda d: d.setdefault("monitoring", {}).update(
        ground_truth_uri=str(labels)))
    try:
        yield
    finally:
        for name, text in saved.items():
            (config_dir / name).write_text(text)


def served(stack: Any) -> tuple[str, dict | None]:
    answer = get_json(f"{stack.serving_url}/version")
    return answer["version"], answer.get("candidate")


def register_biased_candidate(stack: Any, offset: float) -> str:
    """The champion's family trained on every wine's quality + `offset`, logged and registered as training does."""
    import mlflow
    from mlflow.models import infer_signature

    from include.ml.components.training import skops_trusted_types
    from include.ml.configuration import ConfigurationManager
    from tests.support.frames import pipeline_for

    schema = ConfigurationManager(stack.env["MLOPS_CONFIG_DIR"], env=stack.env).config.schema
    wines = pd.read_csv(WINE_CSV, sep=";")
    x, y = wines.drop(columns="quality"), wines["quality"] + offset
    pipeline = pipeline_for(schema, "elasticnet", {})
    pipeline.fit(x, y)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()  # put back after: later tests use their own
    mlflow.set_tracking_uri(stack.tracking_uri)
    mlflow.set_registry_uri(stack.tracking_uri)
    try:
        client = mlflow.MlflowClient()
        found = client.get_experiment_by_name(MODEL)
        experiment = found.experiment_id if found else client.create_experiment(MODEL)
        with mlflow.start_run(experiment_id=experiment, run_name=f"biased-candidate-{offset:+g}"):
            mlflow.log_metric("test_rmse", 0.7)
            info = mlflow.sklearn.log_model(
                pipeline, name="model", registered_model_name=MODEL, serialization_format="skops",
                skops_trusted_types=skops_trusted_types(pipeline, "elasticnet"),
                signature=infer_signature(x.head(), pipeline.predict(x.head())), input_example=x.head(3),
                metadata={"feature_contract": schema.feature_contract()})
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    return str(info.registered_model_version)


def live_evidence(stack: Any, registry: Registry, version: str) -> tuple[str, dict]:
    """The candidate's live_evidence.md and .json, from its training run's card/ artifacts."""
    import tempfile

    import mlflow

    run_id = registry.client.get_model_version(MODEL, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="card", dst_path=tmp,
                                                          tracking_uri=stack.tracking_uri))
        return (folder / "live_evidence.md").read_text(), json.loads((folder / "live_evidence.json").read_text())


def test_a_bad_candidate_is_aborted_and_a_better_one_promoted_with_live_evidence(airflow_stack, tmp_path) -> None:
    client, stack = airflow_stack.client, airflow_stack
    for dag_id in ("ml_pipeline", "ml_release"):
        client.wait_for_dag(dag_id, timeout=120)
        client.unpause(dag_id)
    registry = Registry(stack.mlflow_url)
    started = time.monotonic()
    first = client.trigger("ml_pipeline", conf={"model_family": "elasticnet", "force_promote": True, "tune": False},
                           note="test_ml_release.py: a fresh champion")["dag_run_id"]
    client.wait_for_run("ml_pipeline", first, timeout=300)
    champion = client.xcom("ml_pipeline", first, "evaluate")["version"]
    assert served(stack) == (champion, None)

    wines = pd.concat([pd.read_csv(WINE_CSV, sep=";")] * 20, ignore_index=True).sample(frac=1, random_state=3)
    labels = tmp_path / "labels.csv"
    with release_settings(stack, labels), LabelledTraffic(stack.serving_url, wines, labels) as traffic:
        # 1. The bad candidate: aborted in the shadow step, on the labels' evidence.
        bad = register_biased_candidate(stack, OFFSET)
        run_id = client.trigger("ml_release", conf={"version": bad}, note="test_ml_release.py: a bad candidate")[
            "dag_run_id"]
        client.wait_for_run("ml_release", run_id, timeout=RELEASE_TIMEOUT, expect="failed")
        stack.timings["ml_release: bad candidate, trigger to aborted (s)"] = time.monotonic() - started
        states = {ti["task_id"]: ti["state"] for ti in client.task_instances("ml_release", run_id)}
        assert (states["begin"], states["shadow"], states["bake_shadow"]) == ("success", "success", "failed"), states
        assert (states["promote"], states["confirm"], states["abort"]) == \
            ("upstream_failed", "upstream_failed", "success"), states
        bake_log = client.task_log("ml_release", run_id, "bake_shadow")
        assert "bake shadow: " in bake_log and "look 1:" in bake_log  # a progress line per look
        assert "ALARM" in bake_log and "worse" in bake_log, bake_log[-3000:]
        aborted = client.xcom("ml_release", run_id, "abort")
        assert (aborted["outcome"], aborted["champion"]) == ("aborted", champion)
        assert aborted["reason"].startswith("shadow: ") and "worse" in aborted["reason"]
        assert aborted["reason"] in client.task_log("ml_release", run_id, "abort")
        assert served(stack) == (champion, None)  # the champion alone: 100 % of the traffic
        card, evidence = live_evidence(stack, registry, bad)
        assert f"**Outcome: aborted: {aborted['reason']}" in card.replace("\\|", "|")
        assert evidence["outcome"] == "aborted" and evidence["steps"][-1]["decision"]["quality"] == "worse"
        version = registry.client.get_model_version(MODEL, bad)
        assert (version.tags["release.outcome"], version.tags["release.reason"]) == ("aborted", aborted["reason"])
        aliases = registry.client.get_registered_model(MODEL).aliases
        assert str(aliases["champion"]) == champion and "candidate" not in aliases
        sent_after_abort = sum(traffic.answered().values())

        # 2. The better candidate, from ml_pipeline under release.strategy progressive, promoted by ml_release.
        config_dir = Path(stack.env["MLOPS_CONFIG_DIR"])
        edit_yaml(config_dir / "params.yaml", lambda d: d["release"].update(strategy="progressive"))
        better_started, earlier = time.monotonic(), triggered_releases(client)
        pipeline_run = client.trigger("ml_pipeline", conf={"model_family": "random_forest", "tune": False,
                                                           "force_promote": True},
                                      note="test_ml_release.py: a better candidate")["dag_run_id"]
        client.wait_for_run("ml_pipeline", pipeline_run, timeout=300)
        evaluated = client.xcom("ml_pipeline", pipeline_run, "evaluate")
        better = evaluated["version"]
        assert (evaluated["candidate"], evaluated["champion_version"]) == (better, champion)
        pipeline_states = {ti["task_id"]: ti["state"] for ti in client.task_instances("ml_pipeline", pipeline_run)}
        assert (pipeline_states["deploy"], pipeline_states["signal_candidate"]) == ("skipped", "success")
        assert "is the release candidate" in client.task_log("ml_pipeline", pipeline_run, "deploy")
        release_run = wait_for_triggered_release(client, earlier)
        client.wait_for_run("ml_release", release_run, timeout=RELEASE_TIMEOUT)
        stack.timings["ml_release: better candidate, pipeline trigger to promoted (s)"] = \
            time.monotonic() - better_started
        time.sleep(1)  # a few requests more on the new champion

    assert not traffic.failures(), traffic.outcomes  # not one failed request, across both releases
    answered = traffic.answered()
    assert answered[better] > 0 and answered[bad] == 0  # the bad one only ever scored in the shadow
    assert sum(answered.values()) > sent_after_abort

    states = {ti["task_id"]: ti["state"] for ti in client.task_instances("ml_release", release_run)}
    assert states == {"begin": "success", "shadow": "success", "bake_shadow": "success", "canary_10": "success",
                      "bake_canary_10": "success", "canary_50": "success", "bake_canary_50": "success",
                      "promote": "success", "confirm": "success", "abort": "skipped"}, states
    promoted = client.xcom("ml_release", release_run, "promote")
    assert (promoted["outcome"], promoted["version"], promoted["champion"]) == ("promoted", better, better)
    assert served(stack) == (better, None)
    assert registry.champion(MODEL) == better
    assert "candidate" not in registry.client.get_registered_model(MODEL).aliases
    card, evidence = live_evidence(stack, registry, better)
    assert card.startswith(f"# Live evidence: {MODEL} v{better}\n\n**Outcome: promoted: every step passed")
    assert [(s["step"], s["outcome"]) for s in evidence["steps"]] == \
        [("shadow", "passed"), ("canary_10", "passed"), ("canary_50", "passed")]
    assert evidence["steps"][0]["decision"]["figures"]["candidate_calls"] >= 20
    run = registry.client.get_run(evidence["mlflow_run_id"])
    assert (run.data.tags["outcome"], run.data.params["version"], run.data.params["champion"]) == \
        ("promoted", better, champion)
    assert run.data.metrics["canary_50.passed"] == 1.0


def triggered_releases(client: Any) -> set[str]:
    return {r["dag_run_id"] for r in client.get("dags/ml_release/dagRuns", run_type=["asset_triggered"])["dag_runs"]}


def wait_for_triggered_release(client: Any, earlier: set[str]) -> str:
    """The ml_release run the candidate Asset event started (one not in `earlier`), once it has started."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = [r for r in client.get("dags/ml_release/dagRuns", run_type=["asset_triggered"])["dag_runs"]
                if r["dag_run_id"] not in earlier and r["start_date"]]
        if runs:
            return runs[0]["dag_run_id"]
        time.sleep(2)
    raise AssertionError("no asset-triggered ml_release run started from the candidate Asset event")
