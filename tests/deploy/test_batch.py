"""Batch prediction (include/release/batch.py): toy models and flights-like models trained by the pipeline's own
training step, registered in a real MLflow store, exported and loaded as a server loads them; files scored chunk by
chunk, checked with the real GX suite, written atomically."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest

from include.ml.config_file import BatchConfig, DataSourceConfig, MlflowConfig
from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError, DataValidationError, DeploymentError, IngestionError
from include.ml.schema_file import ColumnSpec, SchemaConfig
from include.release.batch import allowed_output, encoded_width, predict_file
from serving.inputs import validate
from serving.model import load_bundle
from tests.support.batch_tables import FEATURES, FLIGHTS, flights_like
from tests.support.bundles import CLASSIFICATION, REGRESSION, register_toy_model, toy_frame
from tests.support.network import static_http_server
from tests.support.project import WINE_CSV
from tests.support.signing import signing_config, trusted_keys

WIDE_VALUES = tuple(f"v{i:04d}" for i in range(3000))
WIDE = SchemaConfig(task="regression", target="y", columns=(
    ColumnSpec(name="x", dtype="float"),
    # Open (no allowed list), one-hot: a column per value seen in training, ~3,000.
    ColumnSpec(name="code", dtype="category", encoding="onehot"),
    ColumnSpec(name="y", dtype="float")))
MODELS = {"regression": "toy-regression", "classification": "toy-classification",
          "flights": "flights-hgb", "flights-forest": "flights-forest", "wide": "toy-wide"}
SCHEMAS = {"regression": REGRESSION, "classification": CLASSIFICATION, "flights": FLIGHTS, "flights-forest": FLIGHTS,
           "wide": WIDE}
# The pipeline's training step (include/ml/components/training.py) fits and logs these: schema, family, params.
TRAINED = {"flights": ("hist_gradient_boosting", {"max_iter": 30}),
           "flights-forest": ("random_forest", {"n_estimators": 10, "min_samples_leaf": 5}),
           "wide": ("random_forest", {"n_estimators": 5, "max_depth": 12})}


def wide_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, index = rng.uniform(0, 1, rows), rng.integers(0, len(WIDE_VALUES), rows)
    return pd.DataFrame({"x": x, "code": np.asarray(WIDE_VALUES)[index], "y": x + index % 7})


def train_and_register(model: str, root: Path, frame: pd.DataFrame) -> str:
    """Fit and log `model` with the pipeline's own training step, register it and make it champion."""
    import mlflow

    from include.ml import registry as model_registry
    from include.ml.components.training import train
    from include.ml.entities import TrainingConfig
    from include.ml.params_file import ModelConfig

    family, hyperparameters = TRAINED[model]
    schema = SCHEMAS[model]
    settings = TrainingConfig(schema, ModelConfig(family=family, hyperparameters=hyperparameters),
                              mlflow_config(root, model, (root / "art").as_uri()), {})
    trained = train(frame.dropna(subset=[schema.target]), settings, f"batch-{model}", root / model, "generated")
    version = model_registry.register(MODELS[model], trained.model_uri, trained.mlflow_run_id)
    mlflow.MlflowClient().set_registered_model_alias(MODELS[model], "champion", version)
    return version


def mlflow_config(root: Path, model: str, artifact_location: str | None = None) -> MlflowConfig:
    return MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_location=artifact_location,
                        registered_model_name=MODELS[model])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One MLflow store holding a champion of each model; yields where their model stores go."""
    import mlflow

    root = tmp_path_factory.mktemp("batch-registry")
    # MLflow's URIs are process-wide: leave them as other modules expect once done.
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{root}/mlflow.db")  # an earlier module may have set one of its own
    experiment = mlflow.create_experiment("batch", artifact_location=(root / "art").as_uri())
    client = mlflow.MlflowClient()
    for task in ("regression", "classification"):
        client.set_registered_model_alias(MODELS[task], "champion",
                                          register_toy_model(MODELS[task], experiment, task=task))
    train_and_register("flights", root, flights_like(3000, seed=1))
    train_and_register("flights-forest", root, flights_like(3000, seed=1))
    train_and_register("wide", root, wide_frame(8000))
    yield root / "models"
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def config(registry: Path, model: str = "regression", chunk_rows: int = 7, schema: SchemaConfig | None = None,
           **batch: Any) -> BatchPredictionConfig:
    return BatchPredictionConfig(schema or SCHEMAS[model],
                                 DataSourceConfig(uri="unused.csv"),  # the format (","); inputs are given per call
                                 BatchConfig(chunk_rows=chunk_rows, **batch),
                                 mlflow_config(registry.parent, model), registry / MODELS[model], signing_config())


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



@pytest.mark.integration  # a moto server
def test_a_percent_escaped_output_cannot_leave_the_allowed_prefix(registry: Path, tmp_path: Path, s3_endpoint: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 9: `s3://bucket/%6fut/x.csv` passed a `s3://bucket/out/` rule (the check decoded the key) and was
    uploaded to the literal key `%6fut/x.csv`. Now the check and the upload take the one key, and refuse it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="batch-escape")
    rules = BatchConfig(allowed_outputs=("s3://batch-escape/out/",))
    rows = write_input(tmp_path / "in.csv", toy_frame("regression", rows=5))
    for attack in ("s3://batch-escape/%6fut/x.csv", "s3://batch-escape/out/%2e%2e/x.csv",
                   "s3://batch-escape/out/../x.csv", "s3://batch-escape/out//x.csv", "s3://batch-escape/out/./x.csv"):
        with pytest.raises(BatchPredictionError, match=re.escape(f"output {attack!r} is refused: it holds")):
            allowed_output(attack, rules, tmp_path)
        with pytest.raises(BatchPredictionError, match=re.escape(f"output {attack!r} is refused: it holds")):
            predict_file(config(registry), str(rows), attack)  # the upload refuses it too, whoever checked
    assert "Contents" not in s3.list_objects_v2(Bucket="batch-escape"), "a refused output was written"
    allowed = allowed_output("s3://batch-escape/out/x.csv", rules, tmp_path)
    assert predict_file(config(registry), str(rows), allowed).rows == 5
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="batch-escape")["Contents"]] == ["out/x.csv"]


# --- columns by role, every feature type --------------------------------------------------------------------------

def model_predictions(model: str, frame: pd.DataFrame) -> Any:
    """What the registered model's own fitted pipeline predicts for these rows, as pandas reads them from CSV, within
    the tolerance the server's engine is held to (ONNX Runtime serves these models when it agrees that closely)."""
    from include.ml import registry as model_registry
    from serving.engine import REGRESSION_RTOL

    predicted = model_registry.load_model(f"models:/{MODELS[model]}/1").predict(frame[FEATURES]).tolist()
    return pytest.approx(predicted, rel=REGRESSION_RTOL, abs=REGRESSION_RTOL)


@pytest.mark.parametrize("model, output", [("flights", "out.csv"), ("flights-forest", "out.parquet")])
def test_every_role_and_type_scored_as_the_trained_model_predicts(registry: Path, tmp_path: Path, model: str,
                                                                   output: str) -> None:
    """Two id columns copied, an ignore column and the target dropped; a datetime (as text, in its format), an
    ordinal, open categories (with a value never seen in training) and a listed one scored as the model scores them."""
    frame = flights_like(500, seed=2)
    frame.loc[[3, 4], "dest"] = "NEW"
    frame.loc[7, "time_hour"] = "2013-06-01T08:00:00Z"  # ISO 8601 beside the column's own format
    source = write_input(tmp_path / "in.csv", frame)
    result = predict_file(config(registry, model, chunk_rows=128), str(source), str(tmp_path / output))

    out = read_output(tmp_path / output)
    assert list(out.columns) == ["flight_id", "leg", "prediction", "model_name", "model_version"] == result.columns
    assert (result.rows, result.chunks, result.rejected, result.rejected_uri) == (500, 4, 0, None)
    assert out["flight_id"].tolist() == frame["flight_id"].tolist() and out["leg"].tolist() == frame["leg"].tolist()
    assert out["prediction"].tolist() == model_predictions(model, pd.read_csv(source))


def test_optional_columns_may_be_absent_and_the_row_number_is_the_fallback_key(registry: Path,
                                                                               tmp_path: Path) -> None:
    frame = flights_like(60, seed=3)
    expected = model_predictions("flights", frame)
    lean = write_input(tmp_path / "lean.csv", frame.drop(columns=["leg", "note", "arr_delay"]))
    predict_file(config(registry, "flights", chunk_rows=25), str(lean), str(tmp_path / "lean-out.csv"))
    out = read_output(tmp_path / "lean-out.csv")
    assert list(out.columns) == ["flight_id", "prediction", "model_name", "model_version"]
    assert out["prediction"].tolist() == expected

    # No id column of the schema in the file: batch.id_column, from the file when it has it, else the row number.
    bare = write_input(tmp_path / "bare.csv", frame[FEATURES])
    predict_file(config(registry, "flights", chunk_rows=25, id_column="n"), str(bare), str(tmp_path / "bare-out.csv"))
    out = read_output(tmp_path / "bare-out.csv")
    assert list(out.columns) == ["n", "prediction", "model_name", "model_version"]
    assert out["n"].tolist() == list(range(60)) and out["prediction"].tolist() == expected
    keyed = write_input(tmp_path / "keyed.csv", frame[FEATURES].assign(n=[f"k{i}" for i in range(60)]))
    predict_file(config(registry, "flights", chunk_rows=25, id_column="n"), str(keyed), str(tmp_path / "keyed-out.csv"))
    assert read_output(tmp_path / "keyed-out.csv")["n"].tolist() == [f"k{i}" for i in range(60)]


def test_columns_not_in_the_schema_fail_or_are_dropped_as_the_schema_says(registry: Path, tmp_path: Path) -> None:
    frame = flights_like(30, seed=4).assign(gate=[f"G{i}" for i in range(30)])
    source = write_input(tmp_path / "in.csv", frame)
    with pytest.raises(DataValidationError, match=re.escape("expect_table_columns_to_match_set; observed "
                                                            "unexpected ['gate']")):
        predict_file(config(registry, "flights"), str(source), str(tmp_path / "out.csv"))
    assert not (tmp_path / "out.csv").exists() and leftovers(tmp_path) == []

    lenient = FLIGHTS.model_copy(update={"columns_not_in_schema": "ignore"})
    predict_file(config(registry, "flights", schema=lenient), str(source), str(tmp_path / "out.csv"))
    out = read_output(tmp_path / "out.csv")
    assert "gate" not in out and out["prediction"].tolist() == model_predictions("flights", frame)


# --- bad rows: fail, skip, flag -----------------------------------------------------------------------------------

BETWEEN, IN_SET = "expect_column_values_to_be_between", "expect_column_values_to_be_in_set"
NOT_NULL, TYPE = "expect_column_values_to_not_be_null", "expect_column_values_to_be_in_type_list"


def bad_toy_rows() -> tuple[pd.DataFrame, list[tuple[Any, ...]]]:
    """40 toy rows with an id column and bad values in 7 of them, across chunks of 7; the side file's lines they
    make (row, id, column, expectation, value)."""
    frame = toy_frame("regression", rows=40)
    frame.insert(0, "id", range(1000, 1040))
    frame["x2"], frame["count"] = frame["x2"].astype(object), frame["count"].astype(object)
    frame.loc[[3, 20], "x2"] = 99.0  # out of [-10, 10]
    frame.loc[8, "count"] = 2.5  # not a whole number
    frame.loc[9, "count"] = None  # missing in a non-nullable int column
    frame.loc[[20, 36], "kind"] = "z"  # not an allowed category (row 20 has two problems)
    frame.loc[21, "x2"] = "high"  # text in a number column: that chunk reads x2 as text
    frame.loc[38, "kind"] = None  # missing in a non-nullable category
    lines = [(3, 1003, "x2", BETWEEN, "99.0"), (8, 1008, "count", TYPE, "2.5"), (9, 1009, "count", NOT_NULL, None),
             (20, 1020, "x2", BETWEEN, "99.0"), (20, 1020, "kind", IN_SET, "z"), (21, 1021, "x2", TYPE, "high"),
             (36, 1036, "kind", IN_SET, "z"), (38, 1038, "kind", NOT_NULL, None)]
    return frame, lines


def good_answers(registry: Path, frame: pd.DataFrame, rows: list[int]) -> list[float]:
    good = frame.loc[rows].drop(columns="id").astype({"x2": float, "count": int})
    return served_answers(registry, "regression", good).values


def read_rejected(path: Path) -> list[tuple[Any, ...]]:
    rejected = pd.read_csv(path, dtype={"value": str})
    assert list(rejected.columns) == ["row", "id", "column", "expectation", "expected", "value"]
    return [(r.row, r.id, r.column, r.expectation, None if pd.isna(r.value) else r.value)
            for r in rejected.itertuples()]


def test_skip_leaves_bad_rows_out_and_lists_every_reason(registry: Path, tmp_path: Path) -> None:
    frame, lines = bad_toy_rows()
    source = write_input(tmp_path / "in.csv", frame)
    result = predict_file(config(registry), str(source), str(tmp_path / "out.csv"), on_bad_rows="skip")

    bad = sorted({line[0] for line in lines})
    good = [i for i in range(40) if i not in bad]
    out = read_output(tmp_path / "out.csv")
    assert list(out.columns) == ["id", "prediction", "model_name", "model_version"] == result.columns
    assert out["id"].tolist() == [1000 + i for i in good]
    assert out["prediction"].tolist() == good_answers(registry, frame, good)
    assert read_rejected(tmp_path / "out.csv.rejected.csv") == lines
    expected = pd.read_csv(tmp_path / "out.csv.rejected.csv").set_index("expectation")["expected"].to_dict()
    assert expected[BETWEEN] == "min_value=-10.0, max_value=10.0" and expected[IN_SET] == "value_set=['p', 'q']"
    assert expected[TYPE] in ("dtype=float", "dtype=int")
    assert (result.rows, result.rejected, result.rejected_uri) == (40, 7, f"{tmp_path}/out.csv.rejected.csv")
    assert "7 bad row(s) left out, reasons in" in result.summary() and leftovers(tmp_path) == []


def test_flag_keeps_bad_rows_without_a_prediction(registry: Path, tmp_path: Path) -> None:
    frame, lines = bad_toy_rows()
    source = write_input(tmp_path / "in.csv", frame)
    result = predict_file(config(registry, on_bad_rows="flag"), str(source), str(tmp_path / "out.parquet"))

    bad = sorted({line[0] for line in lines})
    good = [i for i in range(40) if i not in bad]
    out = read_output(tmp_path / "out.parquet")
    assert list(out.columns) == ["id", "prediction", "model_name", "model_version", "rejected"] == result.columns
    assert out["id"].tolist() == list(range(1000, 1040))
    assert out.index[out["rejected"]].tolist() == bad
    assert out["prediction"].isna().tolist() == out["rejected"].tolist()
    assert out.loc[good, "prediction"].tolist() == good_answers(registry, frame, good)
    assert set(out["model_name"]) == {"toy-regression"}  # on every row, flagged ones too
    assert read_rejected(tmp_path / "out.parquet.rejected.csv") == lines


def test_flag_with_a_chunk_of_only_bad_rows_keeps_one_column_type(registry: Path, tmp_path: Path) -> None:
    """The second chunk has no row to score: its empty predictions and probabilities still have the first chunk's
    types, so the Parquet file is written."""
    frame = toy_frame("classification", rows=15).drop(columns="y")
    frame.loc[5:9, "kind"] = "z"
    source = write_input(tmp_path / "in.csv", frame)
    predict_file(config(registry, "classification", chunk_rows=5), str(source), str(tmp_path / "out.parquet"),
                 on_bad_rows="flag")

    out = read_output(tmp_path / "out.parquet")
    good = [*range(5), *range(10, 15)]
    served = served_answers(registry, "classification", frame.loc[good])
    assert out.loc[good, "prediction"].tolist() == served.values
    assert out.loc[good].filter(like="probability_").rename(columns=lambda c: c.removeprefix("probability_")) \
        .to_dict(orient="records") == served.probabilities
    assert out.loc[5:9, "prediction"].isna().all() and out.loc[5:9].filter(like="probability_").isna().all().all()
    assert out["id"].tolist() == list(range(15))


def test_a_file_without_bad_rows_gets_a_side_file_of_just_a_header(registry: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", toy_frame("regression", rows=20))
    result = predict_file(config(registry, on_bad_rows="skip"), str(source), str(tmp_path / "out.csv"))
    assert (tmp_path / "out.csv.rejected.csv").read_text() == "row,id,column,expectation,expected,value\n"
    assert result.rejected == 0 and len(read_output(tmp_path / "out.csv")) == 20


@pytest.mark.parametrize("mode", ["skip", "flag"])
def test_a_failed_skip_or_flag_run_leaves_the_output_and_side_file_alone(registry: Path, tmp_path: Path,
                                                                          mode: str) -> None:
    frame, _ = bad_toy_rows()
    source = write_input(tmp_path / "in.csv", frame.drop(columns="kind"))
    target, side = tmp_path / "out.csv", tmp_path / "out.csv.rejected.csv"
    target.write_text("yesterday's predictions\n")
    side.write_text("yesterday's reasons\n")
    with pytest.raises(DataValidationError, match="kind: expect_column_to_exist"):
        predict_file(config(registry), str(source), str(target), on_bad_rows=mode)
    assert target.read_text() == "yesterday's predictions\n" and side.read_text() == "yesterday's reasons\n"
    assert leftovers(tmp_path) == []


def test_skip_on_every_type_of_the_flights_schema(registry: Path, tmp_path: Path) -> None:
    frame = flights_like(40, seed=5)
    frame["flight_id"] = frame["flight_id"].astype(object)
    frame.loc[5, "time_hour"] = "not a date"
    frame.loc[6, "time_hour"] = "2015-06-01 00:00:00"  # after max
    frame.loc[7, "cut"] = "Awful"  # not an ordinal category
    frame.loc[8, "flight_id"] = None  # an id is checked too: not nullable
    frame.loc[9, "dep_delay"] = 900.0  # after max
    frame.loc[10, "leg"] = None  # nullable id: fine
    source = write_input(tmp_path / "in.csv", frame)
    result = predict_file(config(registry, "flights", chunk_rows=16), str(source), str(tmp_path / "out.csv"),
                          on_bad_rows="skip")

    rejected = pd.read_csv(tmp_path / "out.csv.rejected.csv")
    assert list(rejected.columns) == ["row", "flight_id", "leg", "column", "expectation", "expected", "value"]
    assert rejected[["row", "column", "expectation"]].values.tolist() == [
        [5, "time_hour", TYPE], [6, "time_hour", BETWEEN], [7, "cut", IN_SET], [8, "flight_id", NOT_NULL],
        [9, "dep_delay", BETWEEN]]
    assert rejected["expected"][0] == "dtype=datetime, format=%Y-%m-%d %H:%M:%S"
    assert rejected["value"].tolist()[:3] == ["not a date", "2015-06-01 00:00:00", "Awful"]
    assert rejected["flight_id"].isna().tolist() == [False, False, False, True, False]
    good = [i for i in range(40) if i not in (5, 6, 7, 8, 9)]
    out = read_output(tmp_path / "out.csv")
    assert out["flight_id"].tolist() == good
    # The first chunk's missing id made pandas read its flight_id as floats: the output still has whole numbers.
    assert (tmp_path / "out.csv").read_text().splitlines()[1].startswith("0,L0,")
    assert out["prediction"].tolist() == model_predictions("flights", frame.loc[good])
    assert result.rejected == 5


# --- memory -------------------------------------------------------------------------------------------------------

def peak_growth_mb(run: Callable[[], Any]) -> float:
    """How far above its resident memory at the start `run()` takes this process at its peak, in MiB (Linux:
    writing 5 to /proc/self/clear_refs resets the peak, VmHWM)."""
    def status(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    run()
    return (status("VmHWM") - before) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak resident memory from /proc/self")
def test_a_wide_model_scores_a_chunk_in_predict_calls_of_bounded_memory(registry: Path, tmp_path: Path) -> None:
    """A one-hot of ~2,800 values: 12,000 rows encode to ~270 MB of float64 (ONNX Runtime's one-hot is dense, and
    it holds a few copies). With batch.encoded_mb 8 a chunk of 12,000 rows goes through the model ~370 rows at a
    time; with all rows in one call (what batch prediction did) the peak is far higher."""
    source = write_input(tmp_path / "in.csv", wide_frame(12_000, seed=1))
    bounded: dict[str, Any] = {}
    whole: dict[str, Any] = {}

    def score(into: dict[str, Any], encoded_mb: int, output: str, data: Path = source) -> None:
        into["result"] = predict_file(config(registry, "wide", chunk_rows=12_000, encoded_mb=encoded_mb),
                                      str(data), str(tmp_path / output))

    # What any run costs once, outside the scoring: imports, the model's export and compilation.
    score({}, 8, "warm-up.csv", write_input(tmp_path / "few.csv", wide_frame(50, seed=2)))
    bounded_mb = peak_growth_mb(lambda: score(bounded, 8, "bounded.parquet"))
    whole_mb = peak_growth_mb(lambda: score(whole, 4096, "whole.parquet"))

    model = load_bundle(registry / MODELS["wide"] / "1", trusted_keys())
    width = encoded_width(model)
    assert width == len(model.estimator[:-1].get_feature_names_out()) > 2500  # the fitted preprocessing's output
    assert bounded["result"].predict_rows == 8 * 2**20 // (width * 8) < 12_000 <= whole["result"].predict_rows
    assert read_output(tmp_path / "bounded.parquet").equals(read_output(tmp_path / "whole.parquet"))
    assert bounded_mb < 150, f"peak grew by {bounded_mb:.0f} MiB with encoded_mb 8 (one call: {whole_mb:.0f} MiB)"
    assert whole_mb > 2 * bounded_mb + 150, f"one call per chunk: {whole_mb:.0f} MiB vs {bounded_mb:.0f} MiB"
