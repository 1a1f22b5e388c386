"""Attribution drift (include/monitoring/attribution.py) in whole monitor runs against a real registry.

The issue's done-when: traffic on which one column's relation to the target changed flags attribution drift for
that column, the change made by swapping in a model trained on altered data while the features' distribution stays
the same. Model A is trained on the original table (y from 2*x1 - x2 + [kind = p]) and its attribution profile is
frozen on its training split as evaluate freezes it; model B is trained on the very same feature rows with a target
that no longer depends on x1 (2*x2 + [kind = p]), registered as a new version of the model from the same pipeline
run, and promoted. The captured traffic is fresh rows of the same distribution in both cases.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest

from include.ml import registry
from include.ml.components.training import split_xy, train
from include.ml.components.transformation import split
from include.ml.config_file import MlflowConfig, MonitoringSources
from include.ml.entities import MonitorJob
from include.ml.entities import TransformationConfig as Split
from include.ml.params_file import AttributionPolicy, MonitoringPolicy, SplitConfig
from include.monitoring import attribution
from include.monitoring.monitor import monitor
from include.pipeline import Skipped, drift_signal
from serving.explain import build_explainer
from tests.support.capture import write_capture
from tests.support.frames import dataset, evaluation_config, schema, training_config

END = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)
CASES = [("regression", "elasticnet"), ("classification", "hist_gradient_boosting")]


def altered(frame: pd.DataFrame, task: str, seed: int = 0) -> pd.DataFrame:
    """The same feature rows, a target that depends on x2 and kind only (x1's relation to it is gone)."""
    rng = np.random.default_rng(seed + 100)
    signal = 2 * frame["x2"] + (frame["kind"] == "p")
    y = signal + rng.normal(scale=0.1, size=len(frame)) if task == "regression" else \
        np.select([signal < -0.5, signal < 1.0], ["a", "b"], "c")
    return frame.assign(y=y)


def freeze(model: Any, task: str, train_frame: pd.DataFrame, mlflow_run_id: str, evaluate_dir: Path) -> dict:
    """The profile as evaluate freezes it: model A's mean |attribution| on its training split, written to the stage's
    folder and logged to its run."""
    names = attribution.input_names("unit-model", "1", schema(task))
    features = split_xy(train_frame, schema(task))[0]
    payload = attribution.profile_of(build_explainer(model, names), names, features, AttributionPolicy()).to_json()
    evaluate_dir.mkdir(parents=True, exist_ok=True)
    (evaluate_dir / attribution.PROFILE).write_text(json.dumps(payload))
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_dict(payload, attribution.ARTIFACT)
    return payload


class Swap:
    """Model A (v1) the champion with its frozen profile, model B (v2) trained on altered data, registered."""

    def __init__(self, root: Path, task: str, family: str) -> None:
        self.task, self.root = task, root
        self.mlflow = MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                   artifact_location=(root / "mlartifacts").as_uri(), experiment_name="unit",
                                   registered_model_name="unit-model")
        self.artifacts = root / "artifacts"
        self.run_dir = self.artifacts / "run-1"
        original = dataset(task, rows=800)
        train_frame, test_frame = split(original, Split(schema(task), SplitConfig()))
        (self.run_dir / "transform").mkdir(parents=True)
        train_frame.to_parquet(self.run_dir / "transform" / "train.parquet")
        test_frame.to_parquet(self.run_dir / "transform" / "test.parquet")
        config = training_config(task, family, self.mlflow)
        a = train(train_frame, config, "run-1", root / "train-a", dataset_source="memory")
        self.a_run = a.mlflow_run_id
        registry.promote("unit-model", registry.register("unit-model", a.model_uri, a.mlflow_run_id), "test")
        self.a = registry.load_model("models:/unit-model/1")
        self.frozen = freeze(self.a, task, train_frame, a.mlflow_run_id, self.run_dir / "evaluate")
        b = train(altered(train_frame, task), config, "run-1", root / "train-b", dataset_source="memory")
        self.b_version = registry.register("unit-model", b.model_uri, b.mlflow_run_id)
        self.b = registry.load_model(f"models:/unit-model/{self.b_version}")
        self.traffic = dataset(task, rows=400, seed=1).drop(columns=["y"])  # the same distribution

    def serve(self, version: str, folder: Path, rows: int = 400) -> Path:
        """`version` made champion, and its answers to `rows` rows of traffic captured into `folder`."""
        registry.promote("unit-model", version, "the test's champion")
        model, traffic = (self.a if version == "1" else self.b), self.traffic.head(rows)
        write_capture(folder, "unit-model", version, traffic, model.predict(traffic), END - timedelta(hours=1),
                      rows_per_request=4)
        return folder

    def use(self) -> None:
        """This swap's MLflow store for what the test calls directly (the monitor configures its own)."""
        mlflow.set_tracking_uri(self.mlflow.tracking_uri)
        mlflow.set_registry_uri(self.mlflow.tracking_uri)

    def restore(self) -> None:
        """The frozen profile back in both places (a test removed or spoilt one)."""
        self.use()
        (self.run_dir / "evaluate" / attribution.PROFILE).write_text(json.dumps(self.frozen))
        with mlflow.start_run(run_id=self.a_run):
            mlflow.log_dict(self.frozen, attribution.ARTIFACT)

    def config(self, capture_dir: Path, **attribution: Any) -> MonitorJob:
        return MonitorJob(schema(self.task), evaluation_config(self.task, self.mlflow).promotion, self.mlflow,
                          MonitoringSources(capture_dir=str(capture_dir)),
                          MonitoringPolicy(min_rows=50, attribution=AttributionPolicy(**attribution)), self.artifacts)


@pytest.fixture(scope="module")
def swaps(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Swap]:
    return {}  # built once per case, when a test first asks for it


def _swap(case: tuple[str, str], swaps: dict[tuple[str, str], Swap],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swap]:
    if case not in swaps:
        swaps[case] = Swap(tmp_path_factory.mktemp("-".join(case)), *case)
    swaps[case].use()
    yield swaps[case]
    swaps[case].restore()


@pytest.fixture(params=CASES, ids=[f"{t}-{f}" for t, f in CASES])
def swap(request: pytest.FixtureRequest, swaps: dict[tuple[str, str], Swap],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swap]:
    yield from _swap(request.param, swaps, tmp_path_factory)


@pytest.fixture
def regression(swaps: dict[tuple[str, str], Swap], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swap]:
    yield from _swap(CASES[0], swaps, tmp_path_factory)


def test_the_unchanged_champion_flags_no_attribution_drift(swap: Swap, tmp_path: Path) -> None:
    result = monitor(swap.config(swap.serve("1", tmp_path / "capture")), "monitor-a", END, tmp_path / "out")
    assert result is not None and result.version == "1"
    assert result.drifted == [] and "no drift" in result.summary(), result.summary()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    drift = summary["attribution_drift"]
    assert drift["status"] == "ok" and drift["drifted"] == [] and drift["reference"] == "frozen at evaluate"
    assert drift["rows"] == {"reference": swap.frozen["rows"], "current": 400}
    assert set(drift["columns"]) == {"x1", "x2", "kind"}
    assert all(abs(c["change"]) < 0.1 for c in drift["columns"].values()), drift["columns"]
    assert isinstance(drift_signal(result.xcom()), Skipped)


def test_a_model_trained_on_altered_data_flags_attribution_drift_for_that_column(swap: Swap, tmp_path: Path,
                                                                                   caplog: pytest.LogCaptureFixture
                                                                                   ) -> None:
    capture_dir = swap.serve(swap.b_version, tmp_path / "capture")  # swapped in: trained on altered data
    with caplog.at_level(logging.INFO):
        result = monitor(swap.config(capture_dir), "monitor-b", END, tmp_path / "out")
    assert result.version == swap.b_version
    features = [d for d in result.drifted if not d.startswith("attribution:")]
    assert features == []  # the features' distribution is the same
    assert "attribution:x1" in result.drifted and "attribution:x2" in result.drifted, result.drifted
    assert "ATTRIBUTION DRIFT in " in result.summary() and "x1" in result.summary()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    drift = summary["attribution_drift"]
    assert drift["status"] == "drifted" and drift["reference"] == "frozen at evaluate"
    x1, x2 = drift["columns"]["x1"], drift["columns"]["x2"]
    assert x1["drifted"] and x1["change"] <= -0.1 and x1["ratio"] < 0.5, x1
    assert x2["drifted"] and x2["change"] >= 0.1 and x2["ratio"] > 1, x2
    assert x1["share_reference"] == pytest.approx(
        swap.frozen["columns"]["x1"] / sum(swap.frozen["columns"].values()))  # the frozen profile, not model B's
    assert set(drift["drifted"]) == {c for c, v in drift["columns"].items() if v["drifted"]}
    # the drift Asset is emitted, naming the column and its shares
    signal = drift_signal(result.xcom())
    assert not isinstance(signal, Skipped) and "attribution:x1" in signal.features
    assert "attribution:x1: attribution share " in signal.summary()
    assert "attribution:x1: attribution share" in caplog.text
    page = (tmp_path / "out" / "report.html").read_text()
    assert "What drives predictions (attribution drift)" in page and '<tr class="drifted"><td>x1</td>' in page
    assert 'alt="attribution shares"' in page
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.metrics["attribution/x1.drifted"] == 1.0 and run.data.metrics["attribution_drifted"] >= 2
    assert run.data.metrics["attribution/x1.share_current"] == pytest.approx(x1["share_current"])
    assert "attribution/x1.ratio" in run.data.metrics and json.loads(run.data.tags["attribution_drifted"]) == \
        drift["drifted"]


def test_without_a_frozen_profile_the_reference_is_computed_now_and_said_so(regression: Swap, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    swap = regression
    (swap.run_dir / "evaluate" / attribution.PROFILE).unlink()  # a model evaluated before explanations existed
    _drop_run_artifact(swap)
    with caplog.at_level(logging.INFO, logger="include.monitoring.attribution"):
        result = monitor(swap.config(swap.serve("1", tmp_path / "capture")), "monitor-a", END, tmp_path / "out")
    drift = json.loads((tmp_path / "out" / "summary.json").read_text())["attribution_drift"]
    assert drift["reference"] == "computed now" and drift["status"] == "ok" and result.drifted == []
    assert drift["rows"]["reference"] == 500  # a sample of the 640 training rows (monitoring.attribution.rows)
    assert "no attribution profile frozen at evaluate; computed now on 500 of its 640 reference rows" in caplog.text
    assert "reference computed now" in (tmp_path / "out" / "report.html").read_text()


def _drop_run_artifact(swap: Swap) -> None:
    """Remove the profile model A's run carries (the file store's folder of the run's artifacts)."""
    uri = mlflow.get_run(swap.a_run).info.artifact_uri
    (Path(uri.removeprefix("file://")) / attribution.ARTIFACT).unlink()


def test_the_run_artifact_is_read_first_and_a_malformed_profile_is_skipped(regression: Swap,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The champion's own run's profile wins over the pipeline run's file; a profile that is no profile is warned
    about and the next source used."""
    swap = regression
    evaluate = swap.run_dir / "evaluate"
    run_copy = attribution.frozen_profile(swap.a_run, evaluate)
    assert run_copy is not None and run_copy.columns == pytest.approx(swap.frozen["columns"])
    (evaluate / attribution.PROFILE).write_text(json.dumps({"columns": {"x1": 1.0}, "rows": 3}))
    assert attribution.frozen_profile(swap.a_run, evaluate).rows == swap.frozen["rows"]  # the run's
    _drop_run_artifact(swap)
    assert attribution.frozen_profile(swap.a_run, evaluate).columns == {"x1": 1.0}  # then the file
    (evaluate / attribution.PROFILE).write_text(json.dumps({"columns": {"x1": -1.0}}))
    with caplog.at_level(logging.WARNING, logger="include.monitoring.attribution"):
        assert attribution.frozen_profile(swap.a_run, evaluate) is None
    assert "is not a profile" in caplog.text


def test_too_few_captured_rows_is_not_enough_data(regression: Swap, tmp_path: Path) -> None:
    result = monitor(regression.config(regression.serve("1", tmp_path / "capture", rows=20)), "quiet", END,
                     tmp_path / "out")
    drift = json.loads((tmp_path / "out" / "summary.json").read_text())["attribution_drift"]
    assert drift["status"] == "not enough data" and drift["drifted"] == [] and drift["columns"] == {}
    assert "monitoring.min_rows 50" in drift["note"] and result.drifted == []


def test_shares_and_the_threshold() -> None:
    reference = attribution.Profile({"a": 3.0, "b": 1.0}, 10, "linear", "value")
    current = attribution.Profile({"a": 2.0, "b": 2.0, "c": 0.0}, 10, "linear", "value")
    columns = attribution.compare(reference, current, ("a", "b", "c"), 0.25)
    assert (columns["a"].share_reference, columns["a"].share_current) == (0.75, 0.5)
    assert columns["a"].change == -0.25 and columns["a"].drifted  # at the threshold: drifted
    assert columns["b"].ratio == 2.0 and columns["b"].drifted
    assert columns["c"].ratio is None and not columns["c"].drifted  # no share in either
    assert not any(c.drifted for c in attribution.compare(reference, current, ("a", "b", "c"), 0.3).values())
    assert attribution.Profile({"a": 0.0}, 1, "linear", "value").shares(("a", "b")) == {"a": 0.0, "b": 0.0}


def test_the_attribution_params_load_and_are_checked(tmp_path: Path) -> None:
    import shutil

    from include.ml.configuration import ConfigurationManager
    from include.ml.exceptions import ConfigError
    from tests.support.project import CONFIG_DIR, edit_yaml

    shutil.copytree(CONFIG_DIR, tmp_path / "config")
    policy = ConfigurationManager(tmp_path / "config", env={}).config.monitoring_policy
    assert policy.attribution == AttributionPolicy(share_change=0.1, rows=500, seconds=10.0)
    edit_yaml(tmp_path / "config" / "params.yaml",
              lambda data: data["monitoring"].update({"attribution": {"share_change": 0, "rows": 10}}))
    with pytest.raises(ConfigError) as caught:
        ConfigurationManager(tmp_path / "config", env={})
    assert caught.value.key == "monitoring.attribution.share_change", caught.value


@pytest.mark.parametrize("family", ["hist_gradient_boosting", "elasticnet"])
def test_captured_rows_of_every_type_are_explained_like_the_training_rows(tmp_path: Path, family: str) -> None:
    """Capture reads datetimes back as datetime64 and categories as text, the training split holds them as the CSV
    had them (a datetime in its format, unix seconds): the same rows' profiles agree, column by column."""
    from include.monitoring import capture
    from tests.support import typed

    pipeline, x = typed.fitted("regression", family)
    contract = typed.contract("regression")
    explainer = build_explainer(pipeline, contract)
    sent = pd.DataFrame(typed.as_records(x))  # as the server captures them: datetimes as ISO text in UTC
    sent["time_hour"] = pd.to_datetime(sent["time_hour"]).dt.strftime("%Y-%m-%dT%H:%M:%S")
    sent["sched"] = pd.to_datetime(sent["sched"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")
    write_capture(tmp_path, "flights", "1", sent, pipeline.predict(x), END - timedelta(hours=1))
    captured = capture.collect(MonitoringSources(capture_dir=str(tmp_path)), typed.schema("regression"), "flights",
                               "1", END - timedelta(hours=2), END).frame
    assert captured["time_hour"].dtype == np.dtype("datetime64[ns]")
    reference = attribution.profile_of(explainer, contract.names, x, AttributionPolicy(rows=len(x)))
    current = attribution.profile_of(explainer, contract.names, captured, AttributionPolicy(rows=len(captured)))
    assert set(current.columns) == set(typed.FEATURES) and current.rows == reference.rows == len(x)
    assert current.columns == pytest.approx(reference.columns, rel=1e-6, abs=1e-9)
    assert not any(c.drifted for c in attribution.compare(reference, current, contract.names, 0.1).values())


def test_the_attribution_section_escapes_column_names() -> None:
    """A drafted schema's column names come from a file's header: in the attribution table they stay text."""
    from include.monitoring import drift, report

    name = '<svg onload="alert(1)">'
    shifts = attribution.compare(attribution.Profile({name: 1.0, "b": 1.0}, 10, "linear", "value"),
                                 attribution.Profile({name: 3.0, "b": 1.0}, 10, "linear", "value"), (name, "b"), 0.1)
    section = attribution.AttributionDrift("drifted", attribution.FROZEN, shifts, 0.1, 10, 10, "linear", "value")
    frame = pd.DataFrame({"b": np.arange(200.0)})
    compared = drift.compare(frame, frame, {"b": "numeric"}, MonitoringPolicy())
    page = report.render("t", section.details(), compared, frame, frame, None, section)
    assert "<svg" not in page and '<tr class="drifted"><td>&lt;svg onload=&quot;alert(1)&quot;&gt;</td>' in page
    assert "+25.0 points" in page and page.count("data:image/png;base64,") == 2  # b's histogram, the shares
