"""Batch prediction (include/release/batch.py): toy models registered in a real MLflow store, exported and loaded as
a server loads them; files scored chunk by chunk, checked with the real GX suite, written atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from include.ml.entities import BatchConfig, BatchPredictionConfig, DataSourceConfig, MlflowConfig
from include.ml.exceptions import BatchPredictionError, DataValidationError, DeploymentError, IngestionError
from include.release.batch import allowed_output, predict_file
from serving.inputs import validate
from serving.model import load_bundle
from tests.support.bundles import CLASSIFICATION, REGRESSION, register_toy_model, toy_frame
from tests.support.network import static_http_server
from tests.support.project import WINE_CSV
from tests.support.signing import signing_config, trusted_keys

MODELS = {"regression": "toy-regression", "classification": "toy-classification"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One MLflow store holding a champion of each task; yields where their model stores go."""
    import mlflow

    root = tmp_path_factory.mktemp("batch-registry")
    # Only the tracking URI: the registry follows it unless set, and a registry URI set here would outlive the
    # module and send later modules' registrations to ./mlflow.db.
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment = mlflow.create_experiment("batch", artifact_location=(root / "art").as_uri())
    client = mlflow.MlflowClient()
    for task, name in MODELS.items():
        client.set_registered_model_alias(name, "champion", register_toy_model(name, experiment, task=task))
    yield root / "models"
    mlflow.set_tracking_uri(before)  # MLflow's URIs are process-wide: leave them as other modules expect


def config(registry: Path, task: str = "regression", chunk_rows: int = 7, id_column: str = "id") \
        -> BatchPredictionConfig:
    mlflow = MlflowConfig(tracking_uri=f"sqlite:///{registry.parent}/mlflow.db", artifact_location=None,
                          registered_model_name=MODELS[task])
    return BatchPredictionConfig(REGRESSION if task == "regression" else CLASSIFICATION,
                                 DataSourceConfig(uri="unused.csv"),  # the format (","); inputs are given per call
                                 BatchConfig(chunk_rows=chunk_rows, id_column=id_column),
                                 mlflow, registry / MODELS[task], signing_config())


def write_input(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def read_output(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def served_answers(registry: Path, task: str, frame: pd.DataFrame) -> Any:
    """What the prediction server answers for these rows: its loader, its request validation, its predictor."""
    model = load_bundle(registry / MODELS[task] / "1", trusted_keys())
    records = frame.drop(columns="y", errors="ignore").astype(object).where(frame.notna(), None) \
        .to_dict(orient="records")
    return model.predict(validate(records, model.contract, max_rows=len(records)).columns)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_every_row_scored_as_the_server_scores_it(registry: Path, tmp_path: Path) -> None:
    frame = toy_frame("regression", rows=50)  # with the target column and missing values
    source = write_input(tmp_path / "in.csv", frame)
    result = predict_file(config(registry), str(source), str(tmp_path / "out.csv"))

    out = read_output(tmp_path / "out.csv")
    assert (result.rows, result.chunks, result.model_version) == (50, 8, "1")
    assert list(out.columns) == ["id", "prediction", "model_name", "model_version"] == result.columns
    assert out["id"].tolist() == list(range(50))  # no id column in the input: the 0-based row number
    assert out["prediction"].tolist() == served_answers(registry, "regression", frame).values
    assert set(out["model_name"]) == {"toy-regression"} and set(out["model_version"]) == {1}
    assert "50 rows in 8 chunk(s) scored with toy-regression version 1" in result.summary()


def test_classification_with_an_id_column_to_parquet(registry: Path, tmp_path: Path) -> None:
    frame = toy_frame("classification", rows=30).drop(columns="y")
    frame.insert(0, "order", [f"o-{i}" for i in range(30)])
    source = write_input(tmp_path / "in.csv", frame)
    predict_file(config(registry, "classification", chunk_rows=100, id_column="order"), str(source),
                 str(tmp_path / "out.parquet"))

    out = read_output(tmp_path / "out.parquet")
    served = served_answers(registry, "classification", frame.drop(columns="order"))
    assert list(out.columns) == ["order", "prediction", "probability_a", "probability_b", "probability_c",
                                 "model_name", "model_version"]
    assert out["order"].tolist() == frame["order"].tolist()
    assert out["prediction"].tolist() == served.values
    assert out.filter(like="probability_").rename(columns=lambda c: c.removeprefix("probability_")) \
        .to_dict(orient="records") == served.probabilities
    assert np.allclose(out.filter(like="probability_").sum(axis=1), 1.0)


def test_a_feature_may_be_the_id_column(registry: Path, tmp_path: Path) -> None:
    frame = toy_frame("regression", rows=10).drop(columns="y")
    source = write_input(tmp_path / "in.csv", frame)
    predict_file(config(registry, id_column="count"), str(source), str(tmp_path / "out.csv"))
    out = read_output(tmp_path / "out.csv")
    assert out["count"].tolist() == frame["count"].tolist()
    assert out["prediction"].tolist() == served_answers(registry, "regression", frame).values


@pytest.mark.parametrize("output", ["out.csv", "out.parquet"])
@pytest.mark.parametrize("case", ["missing column", "wrong type in a later chunk"])
def test_a_broken_file_fails_naming_the_column_and_leaves_the_output_alone(
        registry: Path, tmp_path: Path, output: str, case: str) -> None:
    frame = toy_frame("regression", rows=40)
    if case == "missing column":
        frame = frame.drop(columns="x2")
    else:
        frame["x2"] = frame["x2"].astype(object)
        frame.loc[33, "x2"] = "high"  # chunk 5 of 7-row chunks: four chunks were already scored
    source = write_input(tmp_path / "in.csv", frame)
    target = tmp_path / "out" / output
    target.parent.mkdir()
    target.write_bytes(b"yesterday's predictions")

    with pytest.raises(DataValidationError) as error:
        predict_file(config(registry), str(source), str(target))
    message = str(error.value)
    expected = ["x2: expect_column_to_exist"] if case == "missing column" else \
        ["x2: expect_column_values_to_be_in_type_list (expected dtype=float)", "e.g. ['high'] in rows [33]"]
    assert all(part in message for part in expected), message
    assert target.read_bytes() == b"yesterday's predictions" and leftovers(target.parent) == []


def test_bad_rows_are_counted_over_the_whole_file_with_row_ids(registry: Path, tmp_path: Path) -> None:
    frame = toy_frame("regression", rows=40)
    frame.loc[[3, 20, 21], "x2"] = 99.0  # out of [-10, 10], in chunks 1 and 3
    frame.loc[36, "kind"] = "z"  # not an allowed category, in the last chunk
    frame.insert(0, "id", range(1000, 1040))
    source = write_input(tmp_path / "in.csv", frame)

    with pytest.raises(DataValidationError) as error:
        predict_file(config(registry), str(source), str(tmp_path / "out.csv"))
    failures = {(f["column"], f["expectation"]): f for f in error.value.failures}
    assert set(failures) == {("x2", "expect_column_values_to_be_between"),
                             ("kind", "expect_column_values_to_be_in_set")}
    between = failures[("x2", "expect_column_values_to_be_between")]
    assert (between["unexpected_count"], between["rows"], between["examples"]) == (3, [1003, 1020, 1021], [99.0] * 3)
    assert between["unexpected_percent"] == pytest.approx(7.5)
    assert failures[("kind", "expect_column_values_to_be_in_set")]["rows"] == [1036]
    assert not (tmp_path / "out.csv").exists() and leftovers(tmp_path) == []


def test_an_existing_output_is_replaced_whole(registry: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", toy_frame("regression", rows=20))
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    old_inode = target.stat().st_ino
    predict_file(config(registry), str(source), str(target))
    assert len(read_output(target)) == 20
    assert target.stat().st_ino != old_inode and leftovers(tmp_path) == []  # a new file renamed into place


@pytest.mark.parametrize("case, error, message", [
    ("output extension", BatchPredictionError, "expected one of .csv, .parquet, got '.json'"),
    ("output is a directory", BatchPredictionError, "is a directory"),
    ("missing input", BatchPredictionError, "is not a file"),
    ("header only", BatchPredictionError, "has a header but no data rows"),
    ("not a CSV", BatchPredictionError, "is not a valid CSV"),
    ("unknown version", DeploymentError, "no version or alias '7'"),
])
def test_bad_arguments_fail_clearly(registry: Path, tmp_path: Path, case: str, error: type, message: str) -> None:
    source = write_input(tmp_path / "in.csv", toy_frame("regression", rows=5))
    output, version = str(tmp_path / "out.csv"), "champion"
    if case == "output extension":
        output = str(tmp_path / "out.json")
    elif case == "output is a directory":
        output = str(tmp_path / "out.csv")
        (tmp_path / "out.csv").mkdir()
    elif case == "missing input":
        source = tmp_path / "nope.csv"
    elif case == "header only":
        source.write_text("x1,x2,count,kind\n")
    elif case == "not a CSV":
        source.write_bytes(b'"unterminated\n' + os.urandom(64))
    else:
        version = "7"
    with pytest.raises(error, match=message):
        predict_file(config(registry), str(source), output, version)
    assert (tmp_path / "out.csv").is_dir() == (case == "output is a directory") and leftovers(tmp_path) == []


def test_http_input(registry: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    frame = toy_frame("regression", rows=20)
    write_input(site / "today.csv", frame)
    with static_http_server(site) as url:
        result = predict_file(config(registry), f"{url}/today.csv", str(tmp_path / "out.csv"))
        with pytest.raises(IngestionError, match="answered HTTP 404"):
            predict_file(config(registry), f"{url}/missing.csv", str(tmp_path / "missing.csv"))
    assert result.rows == 20 and read_output(tmp_path / "out.csv")["prediction"].tolist() == \
        served_answers(registry, "regression", frame).values
    assert not (tmp_path / "missing.csv").exists()


def test_s3_input_and_output_uploaded_only_when_complete(registry: Path, tmp_path: Path,
                                                         mocked_aws: dict[str, Any]) -> None:
    s3 = mocked_aws["s3"]
    good = toy_frame("regression", rows=20)
    s3.put_object(Bucket="fleet-bucket", Key="in/good.csv", Body=good.to_csv(index=False).encode())
    s3.put_object(Bucket="fleet-bucket", Key="in/bad.csv", Body=good.drop(columns="kind").to_csv(index=False).encode())

    with pytest.raises(DataValidationError, match="kind: expect_column_to_exist"):
        predict_file(config(registry), "s3://fleet-bucket/in/bad.csv", "s3://fleet-bucket/out/bad.parquet")
    assert "Contents" not in s3.list_objects_v2(Bucket="fleet-bucket", Prefix="out/")

    result = predict_file(config(registry), "s3://fleet-bucket/in/good.csv", "s3://fleet-bucket/out/good.parquet")
    s3.download_file("fleet-bucket", "out/good.parquet", str(tmp_path / "good.parquet"))
    assert result.rows == 20 and read_output(tmp_path / "good.parquet")["prediction"].tolist() == \
        served_answers(registry, "regression", good).values


def test_cli_exits_1_naming_the_missing_column(config_dir: Path, isolated_env: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """A broken file fails on its first chunk, before any model is looked up (this registry is empty)."""
    import main

    broken = tmp_path / "no-alcohol.csv"
    pd.read_csv(WINE_CSV, sep=";").drop(columns="alcohol").to_csv(broken, sep=";", index=False)
    output = tmp_path / "scored.parquet"
    assert main.main(["predict", "--config-dir", str(config_dir), "--input", str(broken), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert "predict failed: data validation failed" in error and "alcohol: expect_column_to_exist" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["no-alcohol.csv", config_dir.name,
                                                                 isolated_env.name])  # no output, no temp file


def test_a_trigger_forms_output_must_be_allowed(tmp_path: Path) -> None:
    listed = BatchConfig(allowed_outputs=(f"{tmp_path}/scored/", "s3://bucket/scored/"))
    assert allowed_output("scored/today.csv", listed, tmp_path) == str(tmp_path / "scored" / "today.csv")
    assert allowed_output("s3://bucket/scored/today.parquet", listed, tmp_path) == "s3://bucket/scored/today.parquet"
    for outside in (f"{tmp_path}/scored/../data/train.csv", "data/train.csv", "s3://bucket/scored-not/x.csv"):
        with pytest.raises(BatchPredictionError, match=re.escape(f"output {outside!r} is refused: it is not under")):
            allowed_output(outside, listed, tmp_path)
    only_configured = BatchConfig(output_uri="s3://bucket/nightly.parquet")
    assert allowed_output("s3://bucket/nightly.parquet", only_configured, tmp_path) == "s3://bucket/nightly.parquet"
    with pytest.raises(BatchPredictionError, match="allowed: s3://bucket/nightly.parquet"):
        allowed_output("s3://bucket/other.parquet", only_configured, tmp_path)
    with pytest.raises(BatchPredictionError, match="no output is allowed"):
        allowed_output(f"{tmp_path}/x.csv", BatchConfig(), tmp_path)

