"""Partitioned batch prediction (include/release/partitions.py, include/release/partition_runs.py) on a toy model
in a real SQLite MLflow store: every way of splitting an input gives the single-process output (predict_file), byte
for byte for CSV, and a partition whose try was killed is scored again without losing or repeating a row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

from include.ml.config_file import BatchConfig, DataSourceConfig, MlflowConfig
from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError
from include.release.batch import predict_file
from include.release.partition_runs import combine, predict_partitioned, score_partition
from include.release.partitions import open_quote_line, plan_partitions
from tests.support.bundles import REGRESSION, register_toy_model, toy_frame
from tests.support.registry import sqlite_store
from tests.support.signing import signing_config

MODEL = "toy-partitions"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real SQLite MLflow store with a toy regression forest registered as version 1."""
    root = tmp_path_factory.mktemp("partitions-registry")
    with sqlite_store(root, "partitions") as experiment:
        register_toy_model(MODEL, experiment)
        yield root


def config(root: Path, chunk_rows: int = 16, s3_endpoint: str | None = None, **batch: Any) -> BatchPredictionConfig:
    return BatchPredictionConfig(REGRESSION, DataSourceConfig(uri="unused.csv", s3_endpoint_url=s3_endpoint),
                                 BatchConfig(chunk_rows=chunk_rows, **batch),
                                 MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", registered_model_name=MODEL),
                                 root / "models", signing_config())


def keyed_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    """Toy rows keyed by `order`, whose values hold the separator and quotes: quoted fields in the CSV."""
    frame = toy_frame("regression", rows=rows, seed=seed).drop(columns="y")
    frame.insert(0, "order", [f'o-{i}, "west"' if i % 3 else f"o-{i}" for i in range(rows)])
    return frame


def same_output(single: Path, partitioned: Path) -> None:
    if single.suffix == ".csv":
        assert partitioned.read_bytes() == single.read_bytes()
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(partitioned), pd.read_parquet(single))


@pytest.mark.parametrize("output", ["out.csv", "out.parquet"])
def test_csv_byte_ranges_with_quoted_separators_score_as_one_process(registry: Path, tmp_path: Path,
                                                                     output: str) -> None:
    source = tmp_path / "in.csv"
    keyed_rows(203).to_csv(source, index=False)
    cfg = config(registry, chunk_rows=40, id_column="order")
    single = predict_file(cfg, str(source), str(tmp_path / f"single-{output}"), "1")
    result = predict_partitioned(cfg, str(source), str(tmp_path / output), 4, "1")

    same_output(tmp_path / f"single-{output}", tmp_path / output)
    assert (result.rows, result.partitions, result.columns) == (203, 4, single.columns)
    manifest = json.loads(Path(f"{tmp_path / output}.manifest.json").read_text())
    parts = manifest["partitions"]
    assert [p["kind"] for p in parts] == ["csv_bytes"] * 4 and sum(p["rows_in"] for p in parts) == 203
    assert [p["first_row"] for p in parts] == [0, *pd.Series([p["rows_in"] for p in parts]).cumsum()[:-1]]
    text = source.read_bytes()
    assert all(text[p["start"] - 1:p["start"]] == b"\n" for p in parts)  # each range starts a line
    assert [p["end"] for p in parts[:-1]] == [p["start"] for p in parts[1:]] and parts[-1]["end"] == len(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.csv", output, f"{output}.manifest.json", f"single-{output}"])  # no staging or temp file left


def test_a_quoted_line_break_is_not_split(registry: Path, tmp_path: Path) -> None:
    frame = keyed_rows(60)
    frame.loc[41, "order"] = "o-41\nsecond line"
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    assert open_quote_line(source) == 43  # the header, 41 rows, then the line the field opens on
    plan = plan_partitions(config(registry, id_column="order"), str(source), str(tmp_path / "out.csv"),
                           tmp_path / "parts", "1", partitions=3)
    assert [p.kind for p in plan.partitions] == ["whole"] and "line 43 ends inside a quoted field" in plan.note

    keyed_rows(60).to_csv(tmp_path / "plain.csv", index=False)  # quoted separators, no line break: split
    assert open_quote_line(tmp_path / "plain.csv") is None


def test_parquet_row_groups_score_as_one_process(registry: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    toy_frame("regression", rows=150, seed=3).to_parquet(source, row_group_size=20)  # 8 row groups
    cfg = config(registry, chunk_rows=50)
    plan = plan_partitions(cfg, str(source), str(tmp_path / "out.parquet"), tmp_path / "parts", "1", partitions=3)
    assert [(p.kind, p.start, p.end) for p in plan.partitions] == \
        [("parquet_row_groups", 0, 3), ("parquet_row_groups", 3, 5), ("parquet_row_groups", 5, 8)]  # 60, 40, 50 rows
    predict_file(cfg, str(source), str(tmp_path / "single.csv"), "1")
    result = predict_partitioned(cfg, str(source), str(tmp_path / "out.csv"), 3, "1")
    same_output(tmp_path / "single.csv", tmp_path / "out.csv")
    assert result.rows == 150 and pd.read_csv(tmp_path / "out.csv")["id"].tolist() == list(range(150))


@pytest.mark.parametrize("mode", ["skip", "flag"])
def test_bad_rows_across_partitions_as_one_process(registry: Path, tmp_path: Path, mode: str) -> None:
    """No id column: the key is the input's row number, in the output and the side file, whatever the partition."""
    frame = toy_frame("regression", rows=120, seed=4)
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[[2, 45, 46, 118], "x2"] = 99.0  # out of range, in three partitions
    frame.loc[80, "x2"] = "high"  # text in a number column
    frame.loc[[46, 90], "kind"] = "z"  # not allowed (row 46 has two problems)
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    cfg = config(registry, chunk_rows=25)
    single = predict_file(cfg, str(source), str(tmp_path / "single.csv"), "1", on_bad_rows=mode)
    result = predict_partitioned(cfg, str(source), str(tmp_path / "out.csv"), 4, "1", on_bad_rows=mode)

    same_output(tmp_path / "single.csv", tmp_path / "out.csv")
    assert (tmp_path / "out.csv.rejected.csv").read_bytes() == (tmp_path / "single.csv.rejected.csv").read_bytes()
    assert (result.rejected, single.rejected) == (6, 6)
    rows = pd.read_csv(tmp_path / "out.csv.rejected.csv")["row"].tolist()
    assert rows == [2, 45, 46, 46, 80, 90, 118]
    manifest = json.loads((tmp_path / "out.csv.manifest.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rejected"]) == \
        (120, 120 if mode == "flag" else 114, 6)


def test_a_killed_partition_is_scored_again_without_losing_or_repeating_rows(registry: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    toy_frame("regression", rows=100, seed=5).to_csv(source, index=False)
    cfg = config(registry, chunk_rows=25)
    predict_file(cfg, str(source), str(tmp_path / "single.csv"), "1")
    plan = plan_partitions(cfg, str(source), str(tmp_path / "out.csv"), tmp_path / "parts", "1", partitions=3)
    first, second, third = plan.partitions
    done = score_partition(cfg, plan, first)
    # A try of the second killed mid-way: a partial temporary file, and even its part renamed into place, but no
    # counts (part-00001.json) yet. A killed try of the first after it was done changes nothing.
    staging = Path(plan.staging)
    (staging / f".{second.name}.parquet.999-dead.tmp").write_bytes(b"PAR1 half a row group")
    score_partition(cfg, plan, second)
    (staging / f"{second.name}.json").unlink()
    (staging / f"{second.name}.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(BatchPredictionError, match="partition 1 was not scored"):
        combine(cfg, plan)

    again = score_partition(cfg, plan, first)
    assert again.resumed and (again.rows_in, again.rows_out) == (done.rows_in, done.rows_out)
    assert not score_partition(cfg, plan, second).resumed
    score_partition(cfg, plan, third)
    result = combine(cfg, plan)

    out = pd.read_csv(tmp_path / "out.csv")
    assert result.rows == len(out) == 100 and out["id"].tolist() == list(range(100))
    same_output(tmp_path / "single.csv", tmp_path / "out.csv")
    assert not staging.exists()


@pytest.mark.integration  # a moto server
def test_objects_under_an_s3_prefix_are_the_partitions(registry: Path, tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="batch-parts")
    pieces = [keyed_rows(30, seed=i) for i in range(3)]
    for i, piece in enumerate(pieces):  # keys sort as the rows go: b < c < d; one Parquet among them
        body = piece.to_parquet(index=False) if i == 1 else piece.to_csv(index=False).encode()
        s3.put_object(Bucket="batch-parts", Key=f"in/day-{'bcd'[i]}.{'parquet' if i == 1 else 'csv'}", Body=body)
    s3.put_object(Bucket="batch-parts", Key="in/readme.txt", Body=b"not an input")
    cfg = config(registry, id_column="order", s3_endpoint=s3_endpoint)
    whole = tmp_path / "whole.csv"
    pd.concat(pieces, ignore_index=True).to_csv(whole, index=False)
    predict_file(cfg, str(whole), str(tmp_path / "single.parquet"), "1")

    result = predict_partitioned(cfg, "s3://batch-parts/in/", "s3://batch-parts/out/scored.parquet", None, "1")
    s3.download_file("batch-parts", "out/scored.parquet", str(tmp_path / "out.parquet"))
    same_output(tmp_path / "single.parquet", tmp_path / "out.parquet")
    manifest = json.loads(s3.get_object(Bucket="batch-parts", Key="out/scored.parquet.manifest.json")["Body"].read())
    assert [(p["input"], p["rows_in"]) for p in manifest["partitions"]] == [
        ("s3://batch-parts/in/day-b.csv", 30), ("s3://batch-parts/in/day-c.parquet", 30),
        ("s3://batch-parts/in/day-d.csv", 30)]
    assert result.partitions == 3
    with pytest.raises(BatchPredictionError, match="holds no .csv or .parquet object"):
        plan_partitions(cfg, "s3://batch-parts/none/", str(tmp_path / "x.csv"), tmp_path / "parts", "1")
