"""The monitor: `main.py monitor` on two files (every bad input), capture files read back per the contract, and a
whole monitor run against a real champion in a real SQLite MLflow store: report, summary, MLflow run, live quality."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

import main
from include.ml import registry
from include.ml.components.training import build_pipeline, split_xy, train
from include.ml.components.transformation import split
from include.ml.config_file import MlflowConfig, MonitoringSources
from include.ml.configuration import ConfigurationManager
from include.ml.entities import MonitorJob
from include.ml.entities import TransformationConfig as Split
from include.ml.exceptions import ConfigError, MonitoringError
from include.ml.metrics import compute_metrics
from include.ml.params_file import AttributionPolicy, MonitoringPolicy, PromotionConfig, SplitConfig
from include.monitoring import capture, drift, quality, report
from include.monitoring.files import compare_files
from include.monitoring.monitor import metric_key, monitor
from include.pipeline import Skipped, drift_signal
from tests.support import typed
from tests.support.capture import write_capture
from tests.support.frames import dataset, evaluation_config, schema, training_config
from tests.support.project import CONFIG_DIR, WINE_CSV, edit_yaml

END = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)


# --- main.py monitor --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    return pd.read_csv(WINE_CSV, sep=";").sample(frac=1, random_state=0).reset_index(drop=True)


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, sep=";", index=False)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main.main(["monitor", "--config-dir", str(CONFIG_DIR), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_names_the_shifted_feature_and_ignores_the_target(wine: pd.DataFrame, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    reference = write(wine.iloc[:800], tmp_path / "reference.csv")
    same = write(wine.iloc[800:], tmp_path / "same.csv")
    shifted = write(wine.iloc[800:].assign(alcohol=lambda f: f["alcohol"] + f["alcohol"].std()),
                    tmp_path / "shifted.csv")
    code, out, _ = run_cli(capsys, "--reference", str(reference), "--current", str(same), "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["drifted"] == [] and payload["rows"] == {"reference": 800, "current": len(wine) - 800}
    assert "quality" not in payload["features"] and len(payload["features"]) == 11
    assert {"statistic", "p_value", "distance", "drifted"} <= set(payload["features"]["alcohol"])
    code, out, _ = run_cli(capsys, "--reference", str(reference), "--current", str(shifted), "--json")
    assert code == 0 and json.loads(out)["drifted"] == ["alcohol"]
    code, out, _ = run_cli(capsys, "--reference", str(reference), "--current", str(shifted))
    assert code == 0 and "drifted: alcohol" in out.splitlines()[0]


def bad_current(kind: str, folder: Path, wine: pd.DataFrame) -> Path:
    """A current file with one kind of bad input."""
    path = folder / f"{kind.replace(' ', '-')}.csv"
    if kind == "missing file":
        return path
    if kind == "different columns":
        return write(wine.drop(columns=["pH"]), path)
    if kind == "non-numeric":
        return write(wine.astype({"pH": object}).assign(pH=["high", *wine["pH"][1:]]), path)
    if kind == "empty file":
        path.write_text("")
    elif kind == "header only":
        path.write_text(";".join(wine.columns) + "\n")
    else:  # another separator than data_source.separator
        path.write_text(wine.to_csv(index=False))
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing file", "the current file .* does not exist"),
    ("different columns", r"different columns: only in the reference \['pH'\], only in the current \[\]"),
    ("non-numeric", r"column 'pH' is numeric, but 1 value\(s\) are not numbers, e.g. \['high'\] \(row 2 of the file\)"),
    ("empty file", "the current file .* is empty"),
    ("header only", "has a header but no rows"),
    ("wrong separator", r"different columns: .*is data_source.separator ';' right\?"),
])
def test_cli_bad_input_exits_1_with_a_clear_message(wine: pd.DataFrame, tmp_path: Path, kind: str, message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    reference = write(wine.iloc[:500], tmp_path / "reference.csv")
    current = bad_current(kind, tmp_path, wine.iloc[500:700].reset_index(drop=True))
    code, out, err = run_cli(capsys, "--reference", str(reference), "--current", str(current), "--json")
    assert code == 1 and out == ""
    assert err.startswith("monitor failed: ") and re.search(message, err), err


# --- configuration ----------------------------------------------------------------------------------------------

def test_monitoring_settings_load_with_defaults_and_env_overrides(tmp_path: Path) -> None:
    shutil.copytree(CONFIG_DIR, tmp_path / "config")
    config = ConfigurationManager(tmp_path / "config", env={"MLOPS_CAPTURE_DIR": "s3://bucket/capture",
                                                            "MLOPS_RETRAIN_ON": "both"}).config
    assert (config.monitoring.capture_dir, config.airflow.retrain_on) == ("s3://bucket/capture", "both")
    assert config.airflow.monitor_schedule == "0 6 * * *" and config.monitoring_policy == MonitoringPolicy()
    local = ConfigurationManager(tmp_path / "config", env={}).config.monitoring
    assert Path(local.capture_dir).is_absolute() and local.ground_truth_uri is None


@pytest.mark.parametrize("file, change, key, problem", [
    ("params.yaml", {"features": {"colour": {"psi": 0.2}}}, "monitoring.features.colour", "not a feature"),
    ("params.yaml", {"p_value": 1.5}, "monitoring.p_value", "expected less than 1"),
    ("params.yaml", {"correction": "holm"}, "monitoring.correction", "expected one of bonferroni, benjamini_hochberg"),
    ("params.yaml", {"features": {"pH": {"distance": 1}}}, "monitoring.features.pH.distance", "unknown key"),
    ("config.yaml", {"capture": "x"}, "monitoring.capture", "unknown key; expected one of: capture_dir,"),
])
def test_bad_monitoring_settings_name_the_key(tmp_path: Path, file: str, change: dict, key: str,
                                              problem: str) -> None:
    shutil.copytree(CONFIG_DIR, tmp_path / "config")
    edit_yaml(tmp_path / "config" / file, lambda data: data["monitoring"].update(change))
    with pytest.raises(ConfigError) as caught:
        ConfigurationManager(tmp_path / "config", env={})
    assert caught.value.key == key and problem in caught.value.problem, caught.value


# --- capture files ----------------------------------------------------------------------------------------------

def test_collect_reads_the_versions_rows_of_the_period_and_only_complete_files(tmp_path: Path) -> None:
    config = MonitoringSources(capture_dir=str(tmp_path))
    frame = dataset("regression", rows=30).drop(columns=["y"])
    inside = END - timedelta(hours=1)
    write_capture(tmp_path, "m", "3", frame.iloc[:20], range(20), inside, rows_per_request=4)
    write_capture(tmp_path, "m", "3", frame.iloc[20:], range(10), END - timedelta(hours=30))  # a day before
    write_capture(tmp_path, "m", "3", frame.iloc[20:], range(10), END)  # the end is excluded
    write_capture(tmp_path, "m", "2", frame, range(30), inside)  # another version
    part = write_capture(tmp_path, "m", "3", frame, range(30), inside)
    part.rename(part.with_name(part.name + ".part"))  # still being written
    got = capture.collect(config, schema("regression"), "m", "3", END - timedelta(hours=24), END)
    assert got.files == 4 and len(got.frame) == 20
    assert list(got.frame["prediction"]) == list(range(20))
    assert got.frame["kind"].tolist() == frame["kind"].iloc[:20].tolist()
    assert got.frame["x1"].isna().sum() == frame["x1"].iloc[:20].isna().sum()
    assert set(got.frame["row"]) == {0, 1, 2, 3} and got.frame["request_id"].nunique() == 5


@pytest.mark.integration  # a moto server stands in for S3
def test_collect_reads_an_s3_capture_dir_as_ec2_hosts_ship_it(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    frame = dataset("regression", rows=30).drop(columns=["y"])
    local = write_capture(tmp_path, "m", "3", frame, range(30), END - timedelta(hours=1))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="capture-test")
    folder = f"models/capture/m/{END:%Y-%m-%d}"
    s3.upload_file(str(local), "capture-test", f"{folder}/host-1.jsonl.gz")
    s3.upload_file(str(local), "capture-test", f"{folder}/host-2.jsonl.gz.part")  # not shipped yet: ignored
    config = MonitoringSources(capture_dir="s3://capture-test/models/capture", s3_endpoint_url=s3_endpoint)
    got = capture.collect(config, schema("regression"), "m", "3", END - timedelta(hours=24), END)
    assert (got.files, len(got.frame)) == (1, 30)
    with pytest.raises(MonitoringError, match="could not be read"):
        capture.collect(MonitoringSources(capture_dir="s3://no-such-bucket/capture", s3_endpoint_url=s3_endpoint),
                        schema("regression"), "m", "3", END - timedelta(hours=1), END)


@pytest.mark.parametrize("name, content, message", [
    ("truth.csv", None, "is not a file"),
    ("truth.csv", "request_id,truth\na,1\n", r"lacks the column\(s\) \['y'\]; it needs request_id, optional row"),
    ("truth.csv", "\x00\x01garbage", r"lacks the column\(s\) \['request_id', 'y'\]"),
    ("truth.parquet", "not parquet", "could not be read"),
])
def test_bad_ground_truth_is_a_clear_error(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(MonitoringError, match=message):
        quality.read_ground_truth(str(path), schema("regression"))


def test_ground_truth_rows_default_to_0_and_join_the_capture(tmp_path: Path) -> None:
    captured = pd.DataFrame({"request_id": ["a", "b", "b"], "row": [0, 0, 1], "prediction": [1.0, 2.0, 3.0]})
    truth = pd.DataFrame({"request_id": ["a", "b"], "y": [1.0, 2.5]})
    truth.to_parquet(tmp_path / "truth.parquet")
    truth = quality.read_ground_truth(str(tmp_path / "truth.parquet"), schema("regression"))
    live = quality.live_quality(captured, truth, schema("regression"),
                                evaluation_config("regression", MlflowConfig(experiment_name="x",
                                                                             registered_model_name="x")).promotion,
                                {"rmse": 0.2}, min_rows=2, drop=0.1)
    assert live.rows == 2 and live.live == pytest.approx(((0 + 0.25) / 2) ** 0.5) and live.dropped


def _capture_lines(tmp_path: Path, lines: list[dict[str, Any]]) -> MonitoringSources:
    folder = tmp_path / "flights" / END.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    base = {"timestamp": (END - timedelta(hours=1)).isoformat().replace("+00:00", "Z"), "model_name": "flights",
            "model_version": "1", "probabilities": None}
    (folder / "f.jsonl.gz").write_bytes(gzip.compress("".join(
        json.dumps({**base, "request_id": f"r{i}", "row": 0, **line}) + "\n" for i, line in enumerate(lines)).encode()))
    return MonitoringSources(capture_dir=str(tmp_path))


@pytest.mark.parametrize("mixed", [False, True], ids=["one JSON type per field", "two JSON types in a field"])
def test_collect_reads_keys_datetimes_and_categories_back(tmp_path: Path, mixed: bool) -> None:
    """The id column from each row's key (as text, to join on; absent: None), a datetime's ISO text as datetime64,
    an open category as text: the same frame whether pyarrow reads the file or, when a field mixes JSON types (a
    key sent as 17 by one client and "18" by another), the line-by-line reader does."""
    schema = typed.schema("regression")
    inputs = {"dep_delay": 1.0, "time_hour": "2013-05-01T10:00:00", "sched": None, "cut": "Good", "carrier": "UA",
              "dest": "D01", "tailnum": None}
    lines = [{"key": {"flight_id": 17}, "inputs": inputs, "prediction": 1.5},
             {"key": {"flight_id": "18" if mixed else 18}, "inputs": {**inputs, "dest": 7 if mixed else "7"},
              "prediction": 2.5},
             {"inputs": {**inputs, "time_hour": None}, "prediction": 3.5}]
    got = capture.collect(_capture_lines(tmp_path, lines), schema, "flights", "1", END - timedelta(hours=2), END)
    frame = got.frame
    assert list(frame.columns) == ["request_id", "row", "timestamp", "flight_id", *typed.FEATURES, "prediction"]
    assert frame["flight_id"].tolist()[:2] == ["17", "18"] and frame["flight_id"].isna().tolist() == [False, False,
                                                                                                    True]
    assert frame["time_hour"].dtype == np.dtype("datetime64[ns]") and pd.isna(frame["time_hour"].iloc[2])
    assert str(frame["time_hour"].iloc[0]) == "2013-05-01 10:00:00"
    assert frame["dest"].tolist() == ["D01", "7", "D01"] and frame["prediction"].tolist() == [1.5, 2.5, 3.5]
    assert frame["tailnum"].isna().all() and frame["dep_delay"].dtype == np.float64


def test_ground_truth_keyed_by_the_id_column_joins_the_captured_key(tmp_path: Path) -> None:
    schema = typed.schema("regression")
    captured = pd.DataFrame({"request_id": ["a", "b", "c", "d"], "row": [0, 0, 0, 0],
                             "flight_id": ["17", "18", None, "17"], "prediction": [1.0, 2.0, 3.0, 5.0]})
    pd.DataFrame({"flight_id": [17, 18, 19], "arr_delay": [1.0, 4.0, 9.0]}).to_csv(tmp_path / "truth.csv",
                                                                                   index=False)
    truth = quality.read_ground_truth(str(tmp_path / "truth.csv"), schema)
    assert list(truth.columns) == ["flight_id", "arr_delay"]
    live = quality.live_quality(captured, truth, schema, PromotionConfig(metric="mae"), {"mae": 1.0}, min_rows=2,
                                drop=0.1)
    # both predictions of flight 17 get its true value; the row without a key none
    assert live.rows == 3 and live.live == pytest.approx((0 + 2 + 4) / 3)
    pd.DataFrame({"flight_id": [17.0, None], "arr_delay": [1.0, 2.0]}).to_parquet(tmp_path / "truth.parquet")
    assert quality.read_ground_truth(str(tmp_path / "truth.parquet"), schema)["flight_id"].tolist() == ["17"]
    (tmp_path / "bad.csv").write_text("flight,arr_delay\n17,1\n")
    with pytest.raises(MonitoringError, match=r"lacks the column\(s\) \['request_id'\]; it needs request_id, "
                                              r"optional row \(or the id column 'flight_id'\), and 'arr_delay'"):
        quality.read_ground_truth(str(tmp_path / "bad.csv"), schema)


def test_main_monitor_on_two_files_leaves_out_ids_and_ignored_columns_and_reads_datetimes(tmp_path: Path) -> None:
    schema = typed.schema("regression")
    reference = typed.frame("regression", rows=400, seed=1)
    current = typed.frame("regression", rows=400, seed=2)
    current["flight_id"] += 10_000  # new ids every day: never drift
    reference.to_csv(tmp_path / "reference.csv", index=False)
    current.to_csv(tmp_path / "current.csv", index=False)
    report = compare_files(tmp_path / "reference.csv", tmp_path / "current.csv", schema, ",",
                           MonitoringPolicy(min_rows=50))
    assert set(report.features) == {*typed.FEATURES, "time_hour.hour", "sched.hour", "time_hour.dayofweek",
                                    "sched.dayofweek"}
    assert report.features["time_hour"].status == "not tested" and report.features["cut"].kind == "categorical"
    assert report.drifted == []


def test_a_corrupt_capture_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "m" / END.strftime("%Y-%m-%d")
    folder.mkdir(parents=True)
    (folder / "bad.jsonl.gz").write_bytes(gzip.compress(b"{not json\n"))
    with pytest.raises(MonitoringError, match="is not valid capture JSON lines"):
        capture.collect(MonitoringSources(capture_dir=str(tmp_path)), schema("regression"), "m", "1",
                        END - timedelta(hours=1), END + timedelta(hours=1))


def _gzip_bomb(path: Path, line: bytes, mib: int) -> None:
    """A real gzip bomb: `mib` MiB of the same capture line, compressed at the best ratio (about 1000:1)."""
    block = line * ((1 << 20) // len(line))
    with gzip.GzipFile(path, "wb", compresslevel=9) as out:
        for _ in range(mib):
            out.write(block)


@pytest.mark.parametrize("cap", ["max_file_mb", "max_file_rows"])
def test_a_gzip_bomb_under_capture_is_skipped_without_blowing_memory(tmp_path: Path, cap: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Finding 10: a capture file read whole, whatever it expands to. A 1 GiB bomb (about 1 MB on disk) of valid
    capture lines is given up on once it passes the cap, never held in memory, and the period's other files are
    still read."""
    import tracemalloc

    frame = dataset("regression", rows=20).drop(columns=["y"])
    good = write_capture(tmp_path, "m", "3", frame, range(20), END - timedelta(hours=1))
    line = gzip.decompress(good.read_bytes()).splitlines(keepends=True)[0]
    bomb = good.with_name("bomb.jsonl.gz")
    _gzip_bomb(bomb, line, mib=1024)
    assert bomb.stat().st_size < 8 << 20
    caps = {"max_file_mb": 16} if cap == "max_file_mb" else {"max_file_rows": 1000}
    config = MonitoringSources(capture_dir=str(tmp_path), **caps)
    tracemalloc.start()
    try:
        with caplog.at_level("WARNING", logger="include.monitoring.capture"):
            got = capture.collect(config, schema("regression"), "m", "3", END - timedelta(hours=24), END)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"reading the capture held {peak >> 20} MiB"
    assert got.files == 1 and len(got.frame) == 20
    assert len(got.skipped) == 1 and str(bomb) in got.skipped[0] and f"monitoring.{cap}" in got.skipped[0]
    assert str(bomb) in caplog.text and f"monitoring.{cap}" in caplog.text
    # The defaults are caps too.
    assert MonitoringSources().max_file_mb == 256 and MonitoringSources().max_file_rows == 2_000_000


def test_a_reused_request_id_counts_once_in_the_label_join(tmp_path: Path) -> None:
    """Finding 10: a client reusing another client's X-Request-ID multiplied that label's rows in the join (50
    reuses of one id, each with a wild prediction, outweighed 10 true rows). The first capture of each request id
    and row is the one joined; later reuses are left out."""
    folder = tmp_path / "m" / END.strftime("%Y-%m-%d")
    folder.mkdir(parents=True)
    features = {"x1": 1.0, "x2": 2.0, "kind": "p"}

    def line(request: str, prediction: float, hours_before: float) -> str:
        stamp = (END - timedelta(hours=hours_before)).isoformat().replace("+00:00", "Z")
        return json.dumps({"request_id": request, "row": 0, "timestamp": stamp, "model_name": "m",
                           "model_version": "3", "inputs": features, "prediction": prediction}) + "\n"

    # The reuses are in the file read first (names sort), but captured later than the genuine requests.
    (folder / "a-reuses.jsonl.gz").write_bytes(gzip.compress("".join(
        line("r0", 1000.0, 1) for _ in range(50)).encode()))
    (folder / "b-genuine.jsonl.gz").write_bytes(gzip.compress("".join(
        line(f"r{i}", float(i), 2) for i in range(10)).encode()))
    got = capture.collect(MonitoringSources(capture_dir=str(tmp_path)), schema("regression"), "m", "3",
                          END - timedelta(hours=24), END)
    assert len(got.frame) == 60
    pd.DataFrame({"request_id": [f"r{i}" for i in range(10)], "y": [float(i) for i in range(10)]}).to_csv(
        tmp_path / "truth.csv", index=False)
    truth = quality.read_ground_truth(str(tmp_path / "truth.csv"), schema("regression"))
    live = quality.live_quality(got.frame, truth, schema("regression"), PromotionConfig(metric="rmse"),
                                {"rmse": 0.5}, min_rows=5, drop=0.1)
    assert live.rows == 10 and live.live == pytest.approx(0.0) and not live.dropped


# --- a whole monitor run against a real champion ------------------------------------------------------------

@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowConfig, Path, object]:
    """A registered champion of the tiny regression dataset (elasticnet, weak penalty), its test metrics on its run
    and its splits in the artifacts, as training and evaluation leave them (evaluation's plots left out: slow)."""
    root = tmp_path_factory.mktemp("champion")
    mlflow_config = MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db",
                                 artifact_location=(root / "mlartifacts").as_uri(), experiment_name="unit",
                                 registered_model_name="unit-model")
    artifacts_root = root / "artifacts"
    train_frame, test_frame = split(dataset("regression", rows=600), Split(schema("regression"), SplitConfig()))
    (artifacts_root / "run-1" / "transform").mkdir(parents=True)
    train_frame.to_parquet(artifacts_root / "run-1" / "transform" / "train.parquet")
    test_frame.to_parquet(artifacts_root / "run-1" / "transform" / "test.parquet")
    trained = train(train_frame, training_config("regression", "elasticnet", mlflow_config, alpha=0.001), "run-1",
                    root / "train", dataset_source="memory")
    model = registry.load_model(trained.model_uri)
    x, y = split_xy(test_frame, schema("regression"))
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in compute_metrics("regression", model, x, y).items()})
    registry.promote("unit-model", registry.register("unit-model", trained.model_uri, trained.mlflow_run_id), "test")
    return mlflow_config, artifacts_root, model


def monitor_config(mlflow_config: MlflowConfig, artifacts_root: Path, capture_dir: Path,
                   truth: Path | None = None, **params: Any) -> MonitorJob:
    return MonitorJob(schema("regression"), evaluation_config("regression", mlflow_config).promotion,
                         mlflow_config, MonitoringSources(capture_dir=str(capture_dir),
                                                         ground_truth_uri=str(truth) if truth else None),
                         MonitoringPolicy(**params), artifacts_root)


def test_monitor_reports_drift_logs_to_mlflow_and_flags_a_live_quality_drop(
        champion: tuple[MlflowConfig, Path, Any], tmp_path: Path) -> None:
    mlflow_config, artifacts_root, model = champion
    live = dataset("regression", rows=300, seed=1)
    shifted = live.drop(columns=["y"]).assign(x2=lambda f: f["x2"] + 1.0)  # one sd
    path = write_capture(tmp_path / "capture", "unit-model", "1", shifted, model.predict(shifted),
                         END - timedelta(hours=2), rows_per_request=3)
    with gzip.open(path, "rt") as lines:
        keys = [(r["request_id"], r["row"]) for r in map(json.loads, lines)]
    truth = pd.DataFrame(keys, columns=["request_id", "row"]).assign(y=live["y"])
    truth.to_csv(tmp_path / "truth.csv", index=False)
    # Shifting x2 moves its share of the attributions too; attribution drift has tests of its own
    # (test_attribution_drift.py): here only a share moved by half counts.
    config = monitor_config(mlflow_config, artifacts_root, tmp_path / "capture", tmp_path / "truth.csv", min_rows=50,
                            attribution=AttributionPolicy(share_change=0.5))

    result = monitor(config, "monitor-run", END, tmp_path / "out")
    assert result is not None and result.version == "1"
    assert result.drifted == ["x2"] and result.rows_current == 300 and not result.not_enough_data
    assert result.drift_details[0].startswith("x2: ks ")
    assert result.quality_dropped and "DROPPED" in result.quality and result.prediction_drifted, result.quality
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and '<tr class="drifted"><td>x2</td>' in page  # 4 + the shares
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["drifted"] == ["x2"] and summary["quality"]["metric"] == "rmse" and summary["version"] == "1"
    assert summary["attribution_drift"]["reference"] == "computed now" and summary["attribution_drift"]["drifted"] == []
    run = mlflow.get_run(result.mlflow_run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "unit-monitoring"
    assert run.data.tags["model_version"] == "1" and run.data.tags["model_name"] == "unit-model"
    assert run.data.metrics["x2.drifted"] == 1.0 and run.data.metrics["x1.drifted"] == 0.0
    assert run.data.metrics["quality_dropped"] == 1.0 and "x2.p_value" in run.data.metrics
    listed = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(result.mlflow_run_id)}
    assert listed == {"report.html", "summary.json"}
    signal = drift_signal(result.xcom())
    assert signal.features == ["x2"] and "x2: ks" in signal.summary()

    again = monitor(config, "monitor-run-retry", END, tmp_path / "out2")
    assert again.mlflow_run_id == result.mlflow_run_id  # one run per period and version


def test_no_traffic_is_not_enough_data_and_no_signal(champion: tuple[MlflowConfig, Path, Any],
                                                     tmp_path: Path) -> None:
    mlflow_config, artifacts_root, _ = champion
    result = monitor(monitor_config(mlflow_config, artifacts_root, tmp_path / "none"), "quiet", END, tmp_path / "out")
    assert result.not_enough_data and result.drifted == [] and result.rows_current == 0
    assert "not enough data" in result.summary()
    assert isinstance(drift_signal(result.xcom()), Skipped)


def test_without_a_champion_there_is_nothing_to_monitor(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    assert monitor(monitor_config(mlflow_config, tmp_path, tmp_path), "none", END, tmp_path / "out") is None
    assert isinstance(drift_signal({"skipped": "no champion"}), Skipped)


# --- live quality from the captured probabilities ----------------------------------------------------------------

def classifier_capture(tmp_path: Path, rows: int = 200, without: slice = slice(0)) -> tuple[Any, pd.DataFrame,
                                                                                            MonitoringSources]:
    """A fitted classifier's answers to `rows` rows captured as its server records them (probabilities by class
    name), except the rows of `without`, captured with none."""
    config = training_config("classification", "random_forest", MlflowConfig(registered_model_name="m"))
    model = build_pipeline(config).fit(*split_xy(dataset("classification", rows=300), schema("classification")))
    live = dataset("classification", rows=rows, seed=4)
    x = live.drop(columns=["y"])
    proba = [dict(zip(model.classes_, p)) for p in model.predict_proba(x).tolist()]
    proba[without] = [None] * len(proba[without])
    write_capture(tmp_path, "m", "1", x, model.predict(x), END - timedelta(hours=1), probabilities=proba)
    return model, live, MonitoringSources(capture_dir=str(tmp_path))


def test_collect_reads_each_classes_probability(tmp_path: Path) -> None:
    model, live, sources = classifier_capture(tmp_path, rows=30, without=slice(0, 5))
    got = capture.collect(sources, schema("classification"), "m", "1", END - timedelta(hours=2), END,
                          classes=("a", "b", "c"))
    assert list(got.probabilities.columns) == ["a", "b", "c"] and len(got.probabilities) == len(got.frame) == 30
    expected = model.predict_proba(live.drop(columns=["y"]))
    assert got.probabilities.iloc[:5].isna().all().all()  # captured without: missing, not 0
    np.testing.assert_allclose(got.probabilities.iloc[5:].to_numpy(), expected[5:])
    assert capture.collect(sources, schema("classification"), "m", "1", END - timedelta(hours=2), END).probabilities \
        is None  # not asked for


@pytest.mark.parametrize("metric", ["log_loss", "brier_score", "pr_auc", "roc_auc"])
def test_live_probability_metrics_come_from_the_captured_probabilities(tmp_path: Path, metric: str) -> None:
    model, live, sources = classifier_capture(tmp_path)
    got = capture.collect(sources, schema("classification"), "m", "1", END - timedelta(hours=2), END,
                          classes=tuple(model.classes_))
    truth = got.frame[["request_id", "row"]].assign(y=live["y"].to_numpy())
    expected = compute_metrics("classification", model, live.drop(columns=["y"]), live["y"])
    result = quality.live_quality(got.frame, truth, schema("classification"), PromotionConfig(metric=metric),
                                  {metric: expected[metric]}, min_rows=50, drop=0.1, probabilities=got.probabilities)
    assert result.live == pytest.approx(expected[metric]) and result.worse_by == pytest.approx(0, abs=1e-12)
    assert result.metrics == pytest.approx(expected) and "ok" in result.describe()


def test_without_captured_probabilities_a_probability_gate_metric_says_so(tmp_path: Path) -> None:
    model, live, sources = classifier_capture(tmp_path, without=slice(0, 20))
    got = capture.collect(sources, schema("classification"), "m", "1", END - timedelta(hours=2), END,
                          classes=tuple(model.classes_))
    truth = got.frame[["request_id", "row"]].assign(y=live["y"].to_numpy())
    result = quality.live_quality(got.frame, truth, schema("classification"), PromotionConfig(metric="log_loss"),
                                  {"log_loss": 0.5}, min_rows=50, drop=0.1, probabilities=got.probabilities)
    assert result.live is None and not result.dropped
    assert result.describe() == ("live quality: live log_loss needs the predicted probabilities, and 20 of the 200 "
                                 "labelled captured rows have none (captured by a server that did not record them?)")
    assert {"accuracy", "balanced_accuracy", "f1_macro"} == set(result.metrics)  # what the labels alone give
    label_gate = quality.live_quality(got.frame, truth, schema("classification"), PromotionConfig(metric="accuracy"),
                                      {"accuracy": 0.9}, min_rows=50, drop=0.1, probabilities=got.probabilities)
    assert label_gate.live == pytest.approx(result.metrics["accuracy"]) and label_gate.note is None


def test_monitor_scores_a_classifiers_live_log_loss_from_what_its_server_captured(mlflow_config: MlflowConfig,
                                                                                  tmp_path: Path) -> None:
    """The champion's classes (from its model) name the captured probabilities; its logged test_log_loss is the
    yardstick."""
    artifacts_root, task = tmp_path / "artifacts", "classification"
    train_frame, test_frame = split(dataset(task, rows=400), Split(schema(task), SplitConfig()))
    (artifacts_root / "run-1" / "transform").mkdir(parents=True)
    train_frame.to_parquet(artifacts_root / "run-1" / "transform" / "train.parquet")
    trained = train(train_frame, training_config(task, "random_forest", mlflow_config, "sigmoid"), "run-1",
                    tmp_path / "train", dataset_source="memory")
    model = registry.load_model(trained.model_uri)
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in compute_metrics(task, model, *split_xy(test_frame, schema(
            task))).items()})
    registry.promote("unit-model", registry.register("unit-model", trained.model_uri, trained.mlflow_run_id), "test")
    live = dataset(task, rows=200, seed=8)
    x = live.drop(columns=["y"])
    write_capture(tmp_path / "capture", "unit-model", "1", x, model.predict(x), END - timedelta(hours=1),
                  probabilities=[dict(zip(model.classes_, p)) for p in model.predict_proba(x).tolist()])
    with gzip.open(next((tmp_path / "capture").rglob("*.jsonl.gz")), "rt") as lines:
        keys = [(r["request_id"], r["row"]) for r in map(json.loads, lines)]
    pd.DataFrame(keys, columns=["request_id", "row"]).assign(y=live["y"]).to_csv(tmp_path / "truth.csv", index=False)
    config = MonitorJob(schema(task), PromotionConfig(metric="log_loss", min_improvement="1%"), mlflow_config,
                        MonitoringSources(capture_dir=str(tmp_path / "capture"),
                                          ground_truth_uri=str(tmp_path / "truth.csv")),
                        MonitoringPolicy(min_rows=50), artifacts_root)
    result = monitor(config, "monitor-run", END, tmp_path / "out")
    expected = compute_metrics(task, model, x, live["y"])["log_loss"]
    assert result.quality.startswith(f"live log_loss {expected:.4f} vs test "), result.quality
    assert mlflow.get_run(result.mlflow_run_id).data.metrics["live_log_loss"] == pytest.approx(expected)


@pytest.mark.parametrize("mixed", [False, True], ids=["one JSON type per field", "two JSON types in a field"])
def test_collect_reads_the_probabilities_with_either_reader(tmp_path: Path, mixed: bool) -> None:
    """Each class's captured probability, NaN where a row has none (or lacks that class): the same from pyarrow's
    reader and, when a field mixes JSON types, from the line-by-line one."""
    inputs = {"x1": 0.5, "x2": 1.0, "kind": "p"}
    lines = [{"inputs": inputs, "prediction": "c", "probabilities": {"a": 0.2, "b": 0.3, "c": 0.5}},
             {"inputs": {**inputs, "kind": 7 if mixed else "7"}, "prediction": "a", "probabilities": None},
             {"inputs": inputs, "prediction": "b", "probabilities": {"a": 0.1, "b": 0.9}}]
    got = capture.collect(_capture_lines(tmp_path, lines), schema("classification"), "flights", "1",
                          END - timedelta(hours=2), END, classes=("a", "b", "c"))
    assert got.frame["kind"].tolist() == ["p", "7", "p"] and got.frame["prediction"].tolist() == ["c", "a", "b"]
    np.testing.assert_array_equal(got.probabilities.to_numpy(),
                                  [[0.2, 0.3, 0.5], [np.nan, np.nan, np.nan], [0.1, 0.9, np.nan]])


def test_the_report_escapes_feature_names_and_shows_category_values_only_in_its_plots() -> None:
    """A drafted schema takes its column names from a file's header, and category values come from traffic: a
    name or value written as markup stays text (the report also carries no script of its own)."""
    name, value = '<svg onload="alert(1)">', '<img src=x onerror="alert(2)">'
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({name: rng.choice(["a", "b", value], 300)})
    current = pd.DataFrame({name: rng.choice(["a", value], 300, p=[0.2, 0.8])})
    compared = drift.compare(reference, current, {name: "categorical"}, MonitoringPolicy())
    assert compared.drifted == [name]
    page = report.render(f"Monitoring {name}", [f"drifted: {name}", compared.features[name].describe()], compared,
                         reference, current, None)
    assert "<svg" not in page and "<img src=x" not in page and "<script" not in page
    escaped = "&lt;svg onload=&quot;alert(1)&quot;&gt;"
    assert f"<title>Monitoring {escaped}</title>" in page and f'<tr class="drifted"><td>{escaped}</td>' in page
    assert f"<li>drifted: {escaped}</li>" in page and f'alt="{escaped}"' in page


def test_a_feature_name_becomes_a_metric_name_mlflow_accepts(tmp_path: Path) -> None:
    """A name with `//` (a URL in a column header) made MLflow refuse the metric, and the monitor run failed."""
    keys = {"alcohol": "alcohol", "free sulfur dioxide": "free sulfur dioxide", "km/h": "km/h",
            '<svg onload="fetch(`http://127.0.0.1:1/x`)">': "_svg onload_fetch_http_/127.0.0.1_1/x_",
            "a/./b/../c/": "a/b/c", "/": "_"}
    assert {feature: metric_key(feature) for feature in keys} == keys
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run():
            mlflow.log_metrics({f"{key}.drifted": 1.0 for key in keys.values()})
    finally:
        mlflow.set_tracking_uri(previous)
