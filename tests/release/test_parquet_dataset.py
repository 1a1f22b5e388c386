"""A partitioned run into a Parquet dataset directory (an output ending in "/": include/release/parquet_dataset.py)
on a toy model in a real SQLite MLflow store: the directory reads back as the single-file output, row for row; its
_manifest.json counts each file's rows; a second run replaces it whole; a failed one leaves it as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq
import pytest

from include.ml.config_file import BatchConfig, DataSourceConfig, MlflowConfig
from include.ml.entities import BatchPredictionConfig
from include.ml.exceptions import BatchPredictionError
from include.release.batch import predict_file
from include.release.partition_runs import combine, predict_partitioned, score_partition
from include.release.partitions import plan_partitions
from tests.support.bundles import REGRESSION, register_toy_model, toy_frame
from tests.support.registry import sqlite_store
from tests.support.signing import signing_config

MODEL = "toy-parquet-dataset"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("dataset-registry")
    with sqlite_store(root, "dataset") as experiment:
        register_toy_model(MODEL, experiment)
        yield root


def config(root: Path, chunk_rows: int = 16, **batch: Any) -> BatchPredictionConfig:
    return BatchPredictionConfig(REGRESSION, DataSourceConfig(uri="unused.csv"), BatchConfig(chunk_rows=chunk_rows,
                                                                                             **batch),
                                 MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", registered_model_name=MODEL),
                                 root / "models", signing_config())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_directory_output_reads_back_as_the_single_file_output(registry: Path, tmp_path: Path) -> None:
    """No id column: the key is the row number, shifted per partition as in one file."""
    source = tmp_path / "in.csv"
    toy_frame("regression", rows=203, seed=7).to_csv(source, index=False)
    cfg = config(registry, chunk_rows=40)
    single = predict_file(cfg, str(source), str(tmp_path / "single.parquet"), "1")
    result = predict_partitioned(cfg, str(source), f"{tmp_path}/scored/", 4, "1")

    folder = tmp_path / "scored"
    expected = pd.read_parquet(tmp_path / "single.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(folder), expected)  # ids, predictions and dtypes
    assert expected["id"].tolist() == list(range(203))
    assert sorted(p.name for p in folder.iterdir()) == [
        "_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-00003.parquet"]
    manifest = json.loads((folder / "_manifest.json").read_text())
    files = manifest["files"]
    assert [f["rows"] for f in files] == [pq.ParquetFile(folder / f["file"]).metadata.num_rows for f in files]
    assert [p["file"] for p in manifest["partitions"]] == [f["file"] for f in files]
    assert [p["rows_out"] for p in manifest["partitions"]] == [f["rows"] for f in files]
    assert (manifest["rows_in"], manifest["rows_out"], manifest["output_uri"]) == (203, 203, f"{tmp_path}/scored/")
    assert (result.rows, result.partitions, result.columns) == (203, 4, single.columns)
    assert result.manifest_uri == f"{tmp_path}/scored/_manifest.json" and result.rejected_uri is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "scored", "single.parquet"]  # no temp left


@pytest.mark.parametrize("mode", ["skip", "flag"])
def test_bad_rows_and_a_partition_without_output_rows(registry: Path, tmp_path: Path, mode: str) -> None:
    """Four row groups, four partitions; every row of the second is bad: with skip it has no file."""
    frame = toy_frame("regression", rows=120, seed=8)
    frame.loc[30:59, "x2"] = 99.0  # out of range: the whole second row group
    frame.loc[[3, 100], "kind"] = "z"
    source = tmp_path / "in.parquet"
    frame.to_parquet(source, row_group_size=30)
    cfg = config(registry, chunk_rows=20)
    predict_file(cfg, str(source), str(tmp_path / "single.parquet"), "1", on_bad_rows=mode)
    result = predict_partitioned(cfg, str(source), f"{tmp_path}/scored.parquet/", 4, "1", on_bad_rows=mode)

    folder = tmp_path / "scored.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(folder), pd.read_parquet(tmp_path / "single.parquet"))
    side = tmp_path / "scored.parquet.rejected.csv"  # beside the directory, as beside a file
    assert result.rejected_uri == str(side)
    assert side.read_bytes() == (tmp_path / "single.parquet.rejected.csv").read_bytes()
    manifest = json.loads((folder / "_manifest.json").read_text())
    skipped = mode == "skip"
    assert [p["file"] for p in manifest["partitions"]] == [
        "part-00000.parquet", None if skipped else "part-00001.parquet", "part-00002.parquet", "part-00003.parquet"]
    assert [f["rows"] for f in manifest["files"]] == ([29, 30, 29] if skipped else [30, 30, 30, 30])
    assert (manifest["rows_out"], manifest["rejected"]) == ((88 if skipped else 120), 32)


def test_a_second_combine_replaces_the_directory_and_a_failed_one_leaves_it(registry: Path, tmp_path: Path) -> None:
    cfg = config(registry, chunk_rows=25)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    toy_frame("regression", rows=100, seed=9).to_csv(first, index=False)
    toy_frame("regression", rows=60, seed=10).to_csv(second, index=False)
    out = f"{tmp_path}/out/scored/"
    folder = tmp_path / "out" / "scored"
    predict_partitioned(cfg, str(first), out, 4, "1")
    assert len(pd.read_parquet(folder)) == 100 and len(list(folder.glob("part-*.parquet"))) == 4

    predict_partitioned(cfg, str(second), out, 2, "1")  # fewer partitions: no file of the first run is left
    predict_file(cfg, str(second), str(tmp_path / "single.parquet"), "1")
    pd.testing.assert_frame_equal(pd.read_parquet(folder), pd.read_parquet(tmp_path / "single.parquet"))
    assert sorted(p.name for p in folder.iterdir()) == ["_manifest.json", "part-00000.parquet", "part-00001.parquet"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scored"]  # neither the old one nor a temporary
    before = snapshot(folder)

    plan = plan_partitions(cfg, str(first), out, tmp_path / "parts", "1", partitions=3)
    for partition in plan.partitions:
        score_partition(cfg, plan, partition)
    (Path(plan.staging) / "part-00002.parquet").write_bytes(b"PAR1 not a parquet file")  # done, then corrupted
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises for it
        combine(cfg, plan)
    assert snapshot(folder) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scored"]


def test_refused_directory_outputs(registry: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    toy_frame("regression", rows=10).to_csv(source, index=False)
    cfg = config(registry)
    (tmp_path / "taken").write_text("a file")
    for output, reason in [("s3://bucket/scored/", "must be local"), (f"{tmp_path}/scored.csv/", "asks for CSV"),
                           (f"{tmp_path}/taken/", "is a file")]:
        with pytest.raises(BatchPredictionError, match=reason):
            plan_partitions(cfg, str(source), output, tmp_path / "parts", "1")
    with pytest.raises(BatchPredictionError, match="only a partitioned run writes"):
        predict_file(cfg, str(source), f"{tmp_path}/scored/", "1")


def test_a_failed_rename_puts_the_previous_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """publish_dataset alone: if the new directory cannot be renamed in, the old one is renamed back, and the side
    file published just before it is removed again."""
    import os

    from include.release import parquet_dataset

    out, side = f"{tmp_path}/scored/", f"{tmp_path}/scored.rejected.csv"
    frame = pd.DataFrame({"id": [0, 1], "prediction": [0.5, 1.5]})
    manifest = {"partitions": [{"index": 0}, {"index": 1}]}
    files = parquet_dataset.publish_dataset(out, [("part-00000", iter([frame])), ("part-00001", iter([frame]))],
                                            manifest, (side, iter([pd.DataFrame({"row": []})]), ","))
    assert files == [{"file": "part-00000.parquet", "rows": 2}, {"file": "part-00001.parquet", "rows": 2}]
    before = snapshot(tmp_path / "scored")
    rename = os.rename

    def failing(src: Any, dst: Any) -> None:
        if Path(src).name.endswith(".tmp"):
            raise OSError("disk on fire")
        rename(src, dst)

    monkeypatch.setattr(parquet_dataset.os, "rename", failing)
    with pytest.raises(BatchPredictionError, match="cannot be published: disk on fire"):
        parquet_dataset.publish_dataset(out, [("part-00000", iter([frame.head(1)]))], {"partitions": [{"index": 0}]},
                                        (side, iter([pd.DataFrame({"row": [1]})]), ","))
    assert snapshot(tmp_path / "scored") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored"]  # the side file removed, no temporary left


def test_a_forms_allowed_directory_keeps_its_slash(tmp_path: Path) -> None:
    """A trigger form's output under an allowed directory keeps its "/" once made absolute: still a dataset. (The
    CLI's `--output dir/ --partitions 3` runs for real in tests/dag_runs/test_predict_batch.py.)"""
    from include.ml.config_file import BatchConfig
    from include.release.batch import allowed_output

    listed = BatchConfig(allowed_outputs=(f"{tmp_path}/out/",))
    assert allowed_output("out/scored/", listed, tmp_path) == f"{tmp_path}/out/scored/"
    assert allowed_output("out/scored.parquet", listed, tmp_path) == f"{tmp_path}/out/scored.parquet"
