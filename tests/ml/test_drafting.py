"""`python main.py init` drafts: roles, dtypes, datetimes, ordinal scales, categories and their encoding, ranges,
the task, params.yaml and config.yaml, and refusals; on CSVs written to tmp_path. Every draft is loaded with the
real ConfigurationManager; the realistic tables also pass ingestion, validation and transformation."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.tables import STAND_INS
from include.ml.components.ingestion import ingest
from include.ml.components.transformation import transform
from include.ml.components.validation import validate
from include.ml.configuration import ConfigurationManager
from include.ml.draft_model import LARGE_ROWS
from include.ml.drafting import GROUP_TITLES, DraftResult, draft_config
from include.ml.exceptions import DraftError, OutputExistsError, RareClassError, UnknownTargetError
from include.ml.preprocessing import encoding_for
from include.ml.schema_file import ColumnSpec
from tests.support.frames import flights_like
from tests.support.project import WINE_CSV

FILES = ("config.yaml", "schema.yaml", "params.yaml")


def write_csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def csv_of(columns: dict[str, list[Any]], sep: str = ",") -> str:
    """A CSV with one column per entry; None is an empty (missing) cell."""
    rows = zip(*columns.values())
    lines = [sep.join(columns)] + [sep.join("" if v is None else str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def loaded(out: Path) -> Any:
    """The drafted dir as the pipeline loads it; no drafted string column is ever a feature."""
    config = ConfigurationManager(out, env={}).config
    assert all(c.dtype != "string" for c in config.schema.features)
    return config


def draft(tmp_path: Path, text: str | pd.DataFrame, target: str = "y",
          **kwargs: Any) -> tuple[DraftResult, dict[str, Any]]:
    """Draft from `text` (or a frame); check the loader accepts it; return the result and the schema.yaml."""
    if isinstance(text, pd.DataFrame):
        text = text.to_csv(index=False)
    result = draft_config(str(write_csv(tmp_path, text)), target, tmp_path / "cfg", **kwargs)
    loaded(tmp_path / "cfg")
    return result, yaml.safe_load((tmp_path / "cfg" / "schema.yaml").read_text())


def read(tmp_path: Path, name: str) -> str:
    return (tmp_path / "cfg" / name).read_text()


def params_of(tmp_path: Path) -> dict[str, Any]:
    return yaml.safe_load(read(tmp_path, "params.yaml"))


def trains_its_data(out: Path, work: Path) -> pd.DataFrame:
    """Ingest, validate and transform the drafted dir's data with the real stages; the ingested frame."""
    manager = ConfigurationManager(out, env={})
    ingested = ingest(manager.ingestion(), work / "ingest")
    frame = pd.read_parquet(ingested.data_path)
    validate(frame, manager.validation(), work / "validate")
    transform(frame, manager.transformation(), work / "transform")
    return frame


Y12 = [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5, 11.5, 12.5]  # a float target: regression


def test_dtypes_nullable_ranges_and_categories(tmp_path: Path) -> None:
    text = csv_of({
        "f": [0.5, None, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5],
        "i": [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 5],
        "c": ["red", "blue", "red", "blue", "green", "red", "blue", "red", "green", "red", "blue", "red"],
        "s": [f"id-{n}" for n in range(12)],
        "b": [True, False] * 6,
        "w": [1, 2, None, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        "y": Y12,
    })
    result, schema = draft(tmp_path, text)
    cols = schema["columns"]
    assert cols["f"] == {"dtype": "float", "nullable": True, "max_null_fraction": 0.17, "min": 0, "max": 11.5}
    assert cols["i"] == {"dtype": "int", "min": -6, "max": 6}
    assert cols["c"] == {"dtype": "category", "allowed": ["blue", "green", "red"], "encoding": "onehot"}
    assert cols["s"] == {"dtype": "string", "role": "ignore"}  # 12 distinct values in 12 rows: free text
    assert cols["b"] == {"dtype": "category", "allowed": [False, True], "encoding": "onehot"}
    # whole numbers with a gap: what pandas reads, float
    assert cols["w"]["dtype"] == "float" and cols["w"]["nullable"] is True
    assert "whole numbers with missing values, kept float" in read(tmp_path, "schema.yaml")
    assert (result.rows, result.columns, result.task) == (12, 7, "regression")
    assert any(g.startswith("s: {dtype: string, role: ignore} (free text") for g in result.guesses["ignored"])


def test_category_thresholds(tmp_path: Path) -> None:
    # 3 distinct values in 4 rows is more than half the rows: free text, ignored
    text = csv_of({"t": ["a", "b", "c", "a"], "x": [0.5, 1.5, 2.5, 3.5], "y": [1.5, 2.5, 3.5, 4.5]})
    _, schema = draft(tmp_path, text)
    assert schema["columns"]["t"] == {"dtype": "string", "role": "ignore"}
    assert "free text: 3 distinct values in 4 rows" in read(tmp_path, "schema.yaml")
    # 51 distinct values in 204 rows: a category still, an open set (no allowed list)
    many = [f"v{n % 51}" for n in range(204)]
    _, schema = draft(tmp_path / "b", csv_of({"t": many, "y": [n + 0.5 for n in range(204)]}))
    assert schema["columns"]["t"] == {"dtype": "category", "encoding": "target"}
    assert "51 distinct values in 204 rows: an open set" in read(tmp_path / "b", "schema.yaml")
    few = [f"v{n % 50}" for n in range(200)]
    _, schema = draft(tmp_path / "c", csv_of({"t": few, "y": [n + 0.5 for n in range(200)]}))
    assert schema["columns"]["t"]["dtype"] == "category" and len(schema["columns"]["t"]["allowed"]) == 50


@pytest.mark.parametrize(("missing", "rows", "expected"), [
    (1, 100, 0.05), (10, 100, 0.2), (3, 50, 0.12), (7, 100, 0.14),
    (60, 100, 0.8),   # halfway from 0.6 to 1 is less than twice 0.6
    (92, 100, 0.96),  # a mostly missing column still passes its own check
])
def test_max_null_fraction_is_twice_the_observed_share_at_most_halfway_to_one(tmp_path: Path, missing: int, rows: int,
                                                                              expected: float) -> None:
    x = [None] * missing + [float(n) + 0.5 for n in range(rows - missing)]
    _, schema = draft(tmp_path, csv_of({"x": x, "y": [n + 0.5 for n in range(rows)]}))
    assert schema["columns"]["x"]["max_null_fraction"] == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 10], (0, 11)),             # 0 - 1 would cross 0: clipped
    ([0.5, 10.5], (0, 11.5)),
    ([2, 12], (1, 13)),             # a margin that stays above 0 is kept
    ([-5, 5], (-6, 6)),             # negative values: the margin goes both ways
    ([1.23456, 2.34567], (1.123, 2.457)),  # rounded outward to 4 significant digits
    ([5, 5], (4.5, 5.5)),           # constant: +-10% of the value
    ([0, 0], (0, 1)),               # constant 0: +-1, and non-negative
    ([-2, -2], (-2.2, -1.8)),
])
def test_ranges_widen_by_a_tenth_and_never_cross_zero(tmp_path: Path, values: list[float],
                                                      expected: tuple[float, float]) -> None:
    # floats, so the int rounding does not apply; a gap, so that a constant is no constant column (ignored)
    x = [float(v) for v in values] * 3 + [None]
    _, schema = draft(tmp_path, csv_of({"x": x, "y": [n + 0.5 for n in range(len(x))]}))
    assert (schema["columns"]["x"]["min"], schema["columns"]["x"]["max"]) == pytest.approx(expected)


def test_int_ranges_round_to_whole_numbers(tmp_path: Path) -> None:
    _, schema = draft(tmp_path, csv_of({"n": [3, 8, 5, 6], "y": [1.5, 2.5, 3.5, 4.5]}))
    assert schema["columns"]["n"] == {"dtype": "int", "min": 2, "max": 9}


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_separator_is_sniffed(tmp_path: Path, sep: str) -> None:
    text = csv_of({"a b": [1.5, 2.5, 3.5], "c": ["x", "y", "x"], "y": [0.5, 1.5, 2.5]}, sep=sep)
    result, schema = draft(tmp_path, text)
    config = yaml.safe_load(read(tmp_path, "config.yaml"))
    assert config["data_source"]["separator"] == sep
    assert list(schema["columns"]) == ["a b", "c", "y"]
    assert f"separator: {json.dumps(sep)}  # guessed: sniffed from the first 64 KB\n" in read(tmp_path, "config.yaml")
    assert any(g.startswith("data_source.separator") for g in result.guesses.get("data", []))


def test_a_given_separator_wins_and_is_not_marked_as_guessed(tmp_path: Path) -> None:
    result, schema = draft(tmp_path, "a;b,y\n1;2,3.5\n4;5,6.5\n1;2,9.5\n4;5,1.5\n", separator=",")
    assert list(schema["columns"]) == ["a;b", "y"]
    config = read(tmp_path, "config.yaml")
    assert 'separator: ","\n' in config
    assert not any(g.startswith("data_source.separator") for g in result.guesses.get("data", []))


def test_a_separator_must_be_one_character(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="single character"):
        draft(tmp_path, "x,y\n1,2\n", separator=";;")


@pytest.mark.parametrize(("y", "task", "reason"), [
    ([1, 2, 3, 1, 2, 3], "classification", "int target with 3 distinct values"),
    (list(range(11)) * 2, "regression", "int target with 11 distinct values"),
    ([0.5, 1.5, 2.5, 3.5], "regression", "float target"),
    (["cat", "dog", "cat", "dog"], "classification", "category target"),
    ([f"label {n % 51}" for n in range(102)], "classification", "string target"),  # 51 labels: too many
])
def test_task_is_guessed_from_the_target(tmp_path: Path, y: list[Any], task: str, reason: str) -> None:
    x = [n + 0.5 for n in range(len(y))]
    result, schema = draft(tmp_path, csv_of({"x": x, "y": y}))
    assert schema["task"] == result.task == task
    assert f"task: {task}  # guessed: {task} ({reason})" in read(tmp_path, "schema.yaml")
    params = params_of(tmp_path)
    if task == "classification":
        assert params["promotion"]["metric"] == "log_loss"
        other = "regression"
    else:
        assert params["promotion"]["metric"] == "rmse"
        other = "classification"
    # the other task is only possible for an int target
    assert (f"use --task {other} to override" in read(tmp_path, "schema.yaml")) == reason.startswith("int")


def test_a_forced_task_wins(tmp_path: Path) -> None:
    result, schema = draft(tmp_path, csv_of({"x": [0.5, 1.5, 2.5, 3.5], "y": [1, 2, 1, 2]}), task="regression")
    assert schema["task"] == result.task == "regression"
    assert "task: regression  # given with --task" in read(tmp_path, "schema.yaml")
    assert not any(g.startswith("task:") for g in result.guesses.get("data", []))
    assert params_of(tmp_path)["promotion"]["metric"] == "rmse"


@pytest.mark.parametrize(("y", "task", "message"), [
    ([0.5, 1.5, 0.5, 1.5], "classification", "cannot be float"),
    (["a", "b", "a", "b"], "regression", "must be numeric"),
    ([1, 2, 1, 2], "clustering", "unknown task"),
])
def test_impossible_tasks_are_refused(tmp_path: Path, y: list[Any], task: str, message: str) -> None:
    with pytest.raises(DraftError, match=message):
        draft(tmp_path, csv_of({"x": [0.5, 1.5, 2.5, 3.5], "y": y}), task=task)
    assert not (tmp_path / "cfg").exists()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "cfg"
    out.mkdir()
    (out / "schema.yaml").write_text("mine\n")
    with pytest.raises(OutputExistsError, match="schema.yaml") as caught:
        draft(tmp_path, csv_of({"x": [0.5, 1.5], "y": [1.5, 2.5]}))
    assert caught.value.paths == [out / "schema.yaml"]
    assert (out / "schema.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["schema.yaml"]


def test_unknown_target_lists_the_columns(tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError, match=r"'quality'.*'x', 'label'") as caught:
        draft(tmp_path, csv_of({"x": [0.5, 1.5], "label": [1.5, 2.5]}), target="quality")
    assert caught.value.columns == ["x", "label"]


def test_rare_classes_are_named(tmp_path: Path) -> None:
    y = ["a", "a", "b", "b", "c", "d"]
    with pytest.raises(RareClassError, match=r"\['c', 'd'\]") as caught:
        draft(tmp_path, csv_of({"x": [n + 0.5 for n in range(6)], "y": y}))
    assert caught.value.counts == {"c": 1, "d": 1}


def test_a_target_without_any_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="no value on any of the 3 rows"):
        draft(tmp_path, csv_of({"x": [0.5, 1.5, 2.5], "y": [None, None, None]}))


def test_a_single_column_file_asks_for_the_separator(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="one column"):
        draft(tmp_path, "y\n1\n2\n3\n")


def test_yaml_comments_and_headers(tmp_path: Path) -> None:
    data = write_csv(tmp_path, csv_of({"x": [0.5, 1.5, 2.5, 3.5], "y": [1, 2, 1, 2]}), "Penguins Data.csv")
    result = draft_config(str(data), "y", tmp_path / "cfg")
    loaded(tmp_path / "cfg")
    for name in FILES:
        text = read(tmp_path, name)
        assert text.startswith(f"# Drafted by `python main.py init` from {data} on ")
        assert "REVIEW IT BEFORE USE" in text.splitlines()[1]
        assert yaml.safe_load(text)  # comments do not break the YAML
    schema = read(tmp_path, "schema.yaml")
    assert "  x: {dtype: float, min: 0.2, max: 3.8}  # guessed: observed 0.5 to 3.5" in schema
    assert "min_rows: 10" in schema and "# guessed: a tenth of the 4 rows" in schema
    config = read(tmp_path, "config.yaml")
    assert "include/config/config.yaml" in config
    assert "registered_model_name: penguins-data  # guessed: from the file name" in config
    assert result.name == "penguins-data"
    assert result.summary().startswith(f"drafted config.yaml, schema.yaml, params.yaml in {tmp_path / 'cfg'}")


def test_minimal_config_yaml(tmp_path: Path) -> None:
    data = write_csv(tmp_path, csv_of({"x": [0.5, 1.5, 2.5], "y": [0.5, 1.5, 2.5]}), "My_Data.v2.csv")
    draft_config(str(data), "y", tmp_path / "cfg")
    config = yaml.safe_load(read(tmp_path, "config.yaml"))
    url = config["deployment"]["local"].pop("server_url")
    assert config == {
        "data_source": {"uri": str(data), "separator": ","},  # outside the project: absolute
        "mlflow": {"experiment_name": "my-data-v2", "registered_model_name": "my-data-v2"},
        "deployment": {"target": "local", "local": {"model_store": "models/my-data-v2"}},
    }
    assert url.startswith("http://127.0.0.1:") and url != "http://127.0.0.1:8000"  # include/config's port
    assert yaml.safe_load(read(tmp_path, "params.yaml"))["split"] == {"test_size": 0.2, "random_state": 42}


def test_a_zipped_csv_is_read_like_ingestion_reads_it(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "wine.zip", "w") as archive:
        archive.writestr("inner.csv", csv_of({"x": [0.5, 1.5, 2.5], "y": [0.5, 1.5, 2.5]}, sep=";"))
    result = draft_config(str(tmp_path / "wine.zip"), "y", tmp_path / "cfg")
    assert (result.name, result.rows) == ("wine", 3)
    assert yaml.safe_load(read(tmp_path, "config.yaml"))["data_source"]["separator"] == ";"


def test_an_http_source_is_kept_as_given(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_csv(site, csv_of({"x": [0.5, 1.5, 2.5], "y": [0.5, 1.5, 2.5]}), "Red Wine.csv")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/Red%20Wine.csv"
        result = draft_config(uri, "y", tmp_path / "cfg")
    finally:
        server.shutdown()
        server.server_close()
    assert (result.name, result.rows) == ("red-wine", 3)
    assert yaml.safe_load(read(tmp_path, "config.yaml"))["data_source"]["uri"] == uri


def test_drafted_schema_columns_match_the_file(tmp_path: Path) -> None:
    text = csv_of({"z": [1, 2, 3], "a": ["p", "q", "p"], "m": [0.5, None, 1.5], "y": [0.5, 1.5, 2.5]})
    _, schema = draft(tmp_path, text)
    assert list(schema["columns"]) == ["z", "a", "m", "y"]
    assert schema["target"] == "y"


def test_wine_quality_draft(tmp_path: Path) -> None:
    out = tmp_path / "wine"
    result = draft_config(str(WINE_CSV), "quality", out)
    config, schema, params = (yaml.safe_load((out / name).read_text()) for name in FILES)
    frame = pd.read_csv(WINE_CSV, sep=";")
    assert config["data_source"] == {"uri": "data/wine-quality/winequality-red.csv", "separator": ";"}
    assert list(schema["columns"]) == list(frame.columns)
    assert (schema["task"], result.task) == ("classification", "classification")  # 6 distinct quality scores
    assert "int target with 6 distinct values" in (out / "schema.yaml").read_text()
    assert params["promotion"]["metric"] == "log_loss"
    assert (result.rows, result.columns, schema["min_rows"]) == (1599, 12, 100)
    for name, spec in schema["columns"].items():
        assert spec["dtype"] == ("int" if name == "quality" else "float")
        assert "nullable" not in spec
        assert frame[name].between(spec["min"], spec["max"]).all(), name
    # the loader accepts the draft as it is
    config = loaded(out)
    assert config.schema.task == "classification" and config.data_source.separator == ";"


# --- the target -------------------------------------------------------------------------------------------------

def test_rows_without_a_target_are_dropped_at_ingest_and_the_draft_says_how_many(tmp_path: Path) -> None:
    n = 40
    y = [None if i % 10 == 0 else float(i % 7 * 3 + i) for i in range(n)]  # whole numbers with gaps: read as float
    x = [None if i % 10 == 0 else i + 0.5 for i in range(n)]  # missing mostly where the target is
    result, schema = draft(tmp_path, csv_of({"x": x, "y": y}))
    assert schema["target"] == {"name": "y", "missing": "drop"}
    assert "# guessed: 4 of 40 rows have no target: dropped at ingest" in read(tmp_path, "schema.yaml")
    assert any("4 of 40 rows have no target" in g for g in result.guesses["data"])
    assert schema["columns"]["y"]["dtype"] == "int"  # ingestion makes it int again once the gaps are dropped
    assert result.rows == 36
    # x is missing in the file although never on a row with a target: it is nullable (serving sees such rows)
    assert schema["columns"]["x"]["nullable"] is True
    frame = trains_its_data(tmp_path / "cfg", tmp_path / "run")
    assert len(frame) == 36 and frame["y"].dtype == "int64"


def test_a_two_class_target_with_gaps_is_a_classification_of_ints(tmp_path: Path) -> None:
    y = [None if i % 9 == 0 else i % 2 for i in range(60)]
    result, schema = draft(tmp_path, csv_of({"x": [i + 0.5 for i in range(60)], "y": y}))
    assert (result.task, schema["columns"]["y"]["dtype"]) == ("classification", "int")


# --- roles ------------------------------------------------------------------------------------------------------

def test_ids_by_name_or_by_being_distinct_on_every_row(tmp_path: Path) -> None:
    n = 120
    frame = pd.DataFrame({
        "row": range(1000, 1000 + n),                      # an int distinct on every row
        "code": [f"K{i:05d}" for i in range(n)],           # text without spaces distinct on every row
        "flight_id": [i % 60 for i in range(n)],           # an id-like name, repeated, more than 50 values
        "PassengerId": [f"p{i % 80}" for i in range(n)],   # camel case
        "Unnamed: 0": range(n),                            # pandas' name of a nameless index column
        "store_id": [i % 4 for i in range(n)],             # an id-like name with 4 values: a feature
        "weight": [i * 0.37 + 0.01 for i in range(n)],     # floats distinct on every row: a measurement
        "y": [float(i % 13) + 0.5 for i in range(n)],
    })
    result, schema = draft(tmp_path, frame)
    cols = schema["columns"]
    for name, dtype in [("row", "int"), ("code", "string"), ("flight_id", "int"), ("PassengerId", "string"),
                        ("Unnamed: 0", "int")]:
        assert cols[name] == {"dtype": dtype, "role": "id"}, name
    assert cols["store_id"] == {"dtype": "int", "min": 0, "max": 4}
    assert "an id-like name but only 4 values: kept as a feature" in read(tmp_path, "schema.yaml")
    assert cols["weight"]["dtype"] == "float" and "role" not in cols["weight"]
    assert len(result.guesses["ids"]) == 5
    assert [c.name for c in loaded(tmp_path / "cfg").schema.ids] == ["row", "code", "flight_id", "PassengerId",
                                                                     "Unnamed: 0"]


def test_a_short_table_has_no_ids_by_uniqueness(tmp_path: Path) -> None:
    _, schema = draft(tmp_path, csv_of({"n": list(range(19)), "y": [i + 0.5 for i in range(19)]}))
    assert schema["columns"]["n"] == {"dtype": "int", "min": 0, "max": 20}  # 19 rows: below MIN_ID_ROWS


def test_constant_free_text_and_empty_columns_are_never_features(tmp_path: Path) -> None:
    n = 60
    frame = pd.DataFrame({
        "year": [2013] * n,                                                 # constant
        "source": ["web"] * n,                                              # constant text
        "flag": [None if i % 3 else "yes" for i in range(n)],               # one value and missing: a feature
        "name": [f"Doe, Mr. John {i}" for i in range(n)],                   # text with spaces on every row
        "ticket": [f"A/{i % 40} {i}" if i % 2 else str(3000 + i) for i in range(n)],  # mostly distinct codes
        "empty": [None] * n,
        "x": [i + 0.5 for i in range(n)],
        "y": [i % 9 + 0.5 for i in range(n)],
    })
    result, schema = draft(tmp_path, frame)
    cols = schema["columns"]
    assert cols["year"] == {"dtype": "int", "role": "ignore"}
    assert cols["source"] == {"dtype": "string", "role": "ignore"}
    assert cols["flag"]["dtype"] == "category" and "role" not in cols["flag"]
    assert cols["name"] == {"dtype": "string", "role": "ignore"}
    assert cols["ticket"] == {"dtype": "string", "role": "ignore"}
    text = read(tmp_path, "schema.yaml")
    assert "constant 2013: nothing to learn" in text and "free text: 60 distinct values in 60 rows" in text
    # a column without any value cannot pass a missing-value check: left out, and the file may carry it
    assert "empty" not in cols and schema["columns_not_in_schema"] == "ignore"
    assert "# guessed: no value at all in empty: left out" in text
    assert {g.split(":")[0] for g in result.guesses["ignored"]} == {"year", "source", "name", "ticket"}
    trains_its_data(tmp_path / "cfg", tmp_path / "run")


def test_no_feature_left_is_refused_with_the_reasons(tmp_path: Path) -> None:
    n = 30
    text = csv_of({"id": list(range(n)), "const": [1] * n, "y": [i + 0.5 for i in range(n)]})
    with pytest.raises(DraftError, match=r"no column .* can be a feature of 'y': id: a distinct value on each of "
                                         r"the 30 rows; const: constant 1"):
        draft(tmp_path, text)


# --- datetimes --------------------------------------------------------------------------------------------------

def moments(n: int, start: str = "2013-01-01 05:00", step: str = "7h") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq=step)


@pytest.mark.parametrize(("written", "fmt"), [
    ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"),
    ("%d/%m/%Y", "%d/%m/%Y"),           # day first: told apart by days past 12
    ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M"),
    ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z"),
    ("%d %b %Y", "%d %b %Y"),
])
def test_text_dates_get_their_format_guessed(tmp_path: Path, written: str, fmt: str) -> None:
    values = [t.strftime(written) for t in moments(200, step="31h")]
    values[3] = None
    when = pd.DatetimeIndex(pd.to_datetime([v for v in values if v], format=fmt, utc=True)).tz_localize(None)
    result, schema = draft(tmp_path, csv_of({"when": values, "x": [i + 0.5 for i in range(200)],
                                             "y": [i % 11 + 0.5 for i in range(200)]}))
    spec = schema["columns"]["when"]
    assert (spec["dtype"], spec["format"], spec["nullable"]) == ("datetime", fmt, True)
    assert spec["min"] == "2013-01-01"
    span = when[-1] - when[0]
    assert spec["max"] == (when[-1] + span).ceil("D").date().isoformat()  # room for as long again
    assert any(g.startswith("when: {dtype: datetime") for g in result.guesses["datetimes"])
    trains_its_data(tmp_path / "cfg", tmp_path / "run")


def test_iso_dates_need_no_format_and_an_ambiguous_day_month_order_is_flagged(tmp_path: Path) -> None:
    y = [i % 5 + 0.5 for i in range(24)]
    _, schema = draft(tmp_path, csv_of({"d": [f"2020-0{1 + i % 9}-0{1 + i % 9}T0{i % 10}:00" for i in range(24)],
                                        "y": y}))
    assert schema["columns"]["d"]["dtype"] == "datetime"
    _, schema = draft(tmp_path / "b", csv_of({"d": [f"0{1 + i % 9}/0{1 + (i * 5) % 9}/2020" for i in range(24)],
                                              "y": y}))
    assert schema["columns"]["d"]["format"] == "%m/%d/%Y"
    assert "every value also parses as %d/%m/%Y: confirm the order of day and month" in read(tmp_path / "b",
                                                                                              "schema.yaml")


@pytest.mark.parametrize(("name", "scale", "fmt"), [("created_at", 1, "unix"), ("event_time", 1000, "unix_ms"),
                                                    ("timestamp", 1, "unix"), ("signup_date", 1000, "unix_ms")])
def test_epoch_numbers_named_like_times_are_datetimes(tmp_path: Path, name: str, scale: int, fmt: str) -> None:
    seconds = [1_356_998_400 + i * 86_400 for i in range(30)]  # 2013-01-01 to 01-30: max 29 days later
    _, schema = draft(tmp_path, csv_of({name: [s * scale for s in seconds], "x": [i + 0.5 for i in range(30)],
                                        "y": [i % 7 + 0.5 for i in range(30)]}))
    assert schema["columns"][name] == {"dtype": "datetime", "format": fmt, "min": "2013-01-01", "max": "2013-02-28"}


@pytest.mark.parametrize(("name", "values"), [
    ("population", [1_356_998_400 + i for i in range(30)]),  # epoch-like but not named like a time
    ("event_time", [i * 1000 for i in range(30)]),           # named like a time but no epoch
])
def test_other_numbers_are_not_datetimes(tmp_path: Path, name: str, values: list[int]) -> None:
    _, schema = draft(tmp_path, csv_of({name: values, "x": [i + 0.5 for i in range(30)],
                                        "y": [i % 7 + 0.5 for i in range(30)]}))
    assert schema["columns"][name]["dtype"] == "int"


def test_text_that_is_not_a_date_stays_text(tmp_path: Path) -> None:
    n = 60
    _, schema = draft(tmp_path, csv_of({"month": [["Jan", "Feb", "Mar"][i % 3] for i in range(n)],
                                        "code": [f"2013-Q{i % 4 + 1}" for i in range(n)],
                                        "y": [i % 7 + 0.5 for i in range(n)]}))
    assert schema["columns"]["month"]["dtype"] == "category"
    assert schema["columns"]["code"]["dtype"] == "category"


# --- ordinal ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "order"), [
    (["Ideal", "Premium", "Good", "Very Good", "Fair"], ["Fair", "Good", "Very Good", "Premium", "Ideal"]),
    (["M", "XL", "S", "L"], ["S", "M", "L", "XL"]),
    (["high", "low", "medium"], ["low", "medium", "high"]),
    (["Agree", "Strongly disagree", "Neutral", "Disagree", "Strongly agree"],
     ["Strongly disagree", "Disagree", "Neutral", "Agree", "Strongly agree"]),
    (["often", "never", "sometimes", "always"], ["never", "sometimes", "often", "always"]),
    (["SI2", "VS1", "IF", "I1", "VVS2", "SI1", "VS2", "VVS1"],
     ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]),
    (["Gd", "TA", "Ex", "Fa"], ["Fa", "TA", "Gd", "Ex"]),
    (["E", "J", "D", "G", "I", "F", "H"], ["J", "I", "H", "G", "F", "E", "D"]),         # diamond colours: D best
    (["B+", "A", "C", "A-", "F", "B"], ["F", "C", "B", "B+", "A-", "A"]),               # school grades
    (["Luxury", "Basic", "Superior", "Standard", "Comfort"], ["Basic", "Standard", "Comfort", "Superior", "Luxury"]),
    (["gold", "bronze", "silver"], ["bronze", "silver", "gold"]),
    (["3rd", "1st", "2nd"], ["1st", "2nd", "3rd"]),
    (["10-20", "<10", "20-50", "50+"], ["<10", "10-20", "20-50", "50+"]),
    (["1 year", "< 1 year", "10+ years", "5 years"], ["< 1 year", "1 year", "5 years", "10+ years"]),
    (["$10,000-$20,000", "$5,000-$10,000", "over $20,000"], ["$5,000-$10,000", "$10,000-$20,000", "over $20,000"]),
])
def test_known_ordered_scales_are_ordinal_lowest_first(tmp_path: Path, values: list[str], order: list[str]) -> None:
    n = 12 * len(values)
    column = [values[i % len(values)] for i in range(n)]
    result, schema = draft(tmp_path, pd.DataFrame({"grade": column, "x": [i + 0.5 for i in range(n)],
                                                   "y": [i % 7 + 0.5 for i in range(n)]}))
    assert schema["columns"]["grade"] == {"dtype": "ordinal", "categories": order}
    assert "confirm the order" in read(tmp_path, "schema.yaml")
    assert [g.split(":")[0] for g in result.guesses["ordinal"]] == ["grade"]


@pytest.mark.parametrize("values", [
    ["C", "Q", "S"],                                 # port codes: letters with gaps
    [chr(ord("A") + i) for i in range(16)],          # 16 carrier letters: a run too long for grades
    ["D01", "D02", "D03", "D04"],                    # codes: the number is glued to a letter
    ["5A", "5B", "6A"],                              # two values share the number 5
    ["red", "green", "blue"],
    ["a", "b", "c", "d"],                            # lower-case letters: labels, not grades
    ["low", "high"],                                 # two values: a category is as good
])
def test_other_text_stays_a_category(tmp_path: Path, values: list[str]) -> None:
    n = 12 * len(values)
    _, schema = draft(tmp_path, csv_of({"c": [values[i % len(values)] for i in range(n)],
                                        "y": [i % 7 + 0.5 for i in range(n)]}))
    assert schema["columns"]["c"]["dtype"] == "category"


# --- categories and their encoding ------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "rows", "family", "listed"), [
    (3, 60, "random_forest", True),
    (40, 400, "random_forest", True),     # listed, above one-hot's 30: target
    (60, 600, "random_forest", False),    # an open set
    (3, LARGE_ROWS + 1, "hist_gradient_boosting", True),
    (80, LARGE_ROWS + 1, "hist_gradient_boosting", False),
])
def test_category_encoding_is_what_the_pipeline_would_choose(tmp_path: Path, values: int, rows: int, family: str,
                                                             listed: bool) -> None:
    frame = pd.DataFrame({"c": [f"v{i % values}" for i in range(rows)], "x": np.arange(rows) + 0.5,
                          "z": np.arange(rows) % 3 + 0.5, "y": np.arange(rows) % 17 + 0.5})
    _, schema = draft(tmp_path, frame)
    spec = schema["columns"]["c"]
    assert params_of(tmp_path)["model"]["family"] == family
    assert ("allowed" in spec) == listed
    expected = encoding_for(ColumnSpec(name="c", dtype="category", allowed=spec.get("allowed")), family)
    assert spec["encoding"] == expected
    assert loaded(tmp_path / "cfg").schema.features[0].encoding == expected


# --- ranges -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "values", "bounds"), [
    ("hour", [5, 9, 23], (0, 23)),
    ("dep_hour", [0, 12, 22], (0, 23)),
    ("minute", [0, 30, 55], (0, 59)),
    ("second", [1, 2, 3], (0, 59)),
    ("month", [1, 6, 12], (1, 12)),
    ("day", [1, 15, 31], (1, 31)),
    ("DayOfWeek", [1, 3, 7], (1, 7)),
    ("weekday", [0, 3, 5], (0, 6)),
    ("quarter", [1, 2, 4], (1, 4)),
    ("dep_time", [517, 1230, 2359], (0, 2400)),       # hhmm clock times
    ("sched_arr_time", [5, 45, 1159], (0, 2400)),
    ("hour", [0, 12, 24], (0, 27)),                   # 24: not an hour of the day, the margin applies
    ("hours_per_week", [1, 40, 99], (0, 109)),        # not clipped to a week's 53
    ("wait_time", [30, 90, 175], (15, 190)),          # 175 minutes: 75 is no clock minute
])
def test_clock_fields_keep_their_natural_bounds(tmp_path: Path, name: str, values: list[int],
                                                bounds: tuple[int, int]) -> None:
    column = values * 8
    _, schema = draft(tmp_path, csv_of({name: column, "y": [i % 7 + 0.5 for i in range(len(column))]}))
    assert (schema["columns"][name]["min"], schema["columns"][name]["max"]) == bounds


def test_clock_times_with_gaps_keep_their_bounds(tmp_path: Path) -> None:
    values = [517.0, None, 1230.0, 2359.0] * 6
    _, schema = draft(tmp_path, csv_of({"arr_time": values, "y": [i % 7 + 0.5 for i in range(24)]}))
    spec = schema["columns"]["arr_time"]
    assert (spec["dtype"], spec["min"], spec["max"], spec["nullable"]) == ("float", 0, 2400, True)


# --- params.yaml ------------------------------------------------------------------------------------------------

def table(rows: int, categories: int = 1, numbers: int = 2, classes: list[Any] | None = None,
          seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"c{i}": rng.choice(["a", "b", "c", "d"], rows) for i in range(categories)}
                         | {f"n{i}": rng.normal(size=rows) for i in range(numbers)})
    frame["y"] = rng.choice(classes, rows) if classes else rng.normal(size=rows)
    return frame


def test_a_small_table_gets_a_forest_on_every_core(tmp_path: Path) -> None:
    result, _ = draft(tmp_path, table(500))
    params = params_of(tmp_path)
    assert params["model"] == {"family": "random_forest", "random_state": 42,
                               "hyperparameters": {"n_estimators": 200, "n_jobs": -1, "min_samples_leaf": 2}}
    assert params["promotion"] == {"metric": "rmse", "min_improvement": "1%"}
    assert any(g.startswith("model.family: random_forest") for g in result.guesses["model"])
    assert loaded(tmp_path / "cfg").promotion.min_improvement == "1%"


def test_a_large_table_gets_hist_gradient_boosting(tmp_path: Path) -> None:
    draft(tmp_path, table(LARGE_ROWS + 1))
    params = params_of(tmp_path)
    assert params["model"]["family"] == "hist_gradient_boosting" and params["model"]["hyperparameters"] == {}
    assert params["tuning"]["families"] == ["hist_gradient_boosting"]
    assert f"above {LARGE_ROWS:,}" in read(tmp_path, "params.yaml")


def test_dominant_categories_get_hist_gradient_boosting(tmp_path: Path) -> None:
    draft(tmp_path, table(500, categories=3, numbers=2))
    assert params_of(tmp_path)["model"]["family"] == "hist_gradient_boosting"
    draft(tmp_path / "b", table(500, categories=2, numbers=2))  # half: not dominant
    assert params_of(tmp_path / "b")["model"]["family"] == "random_forest"


def test_a_classification_forest_has_larger_leaves_and_log_loss(tmp_path: Path) -> None:
    draft(tmp_path, table(500, classes=["no", "yes"]))
    params = params_of(tmp_path)
    assert params["model"]["hyperparameters"] == {"n_estimators": 200, "n_jobs": -1, "min_samples_leaf": 5}
    assert params["promotion"]["metric"] == "log_loss"


@pytest.mark.parametrize(("minority", "balanced"), [(0.15, True), (0.25, False)])
def test_class_weight_is_balanced_under_a_fifth(tmp_path: Path, minority: float, balanced: bool) -> None:
    rows = 400
    frame = table(rows)
    frame["y"] = ["rare" if i < minority * rows else "common" for i in range(rows)]
    result, _ = draft(tmp_path, frame)
    hyper = params_of(tmp_path)["model"]["hyperparameters"]
    assert (hyper.get("class_weight") == "balanced") == balanced
    if balanced:
        assert "the rarest class 'rare' is 15.0% of the rows" in read(tmp_path, "params.yaml")
        assert any(g.startswith("model.hyperparameters.class_weight") for g in result.guesses["model"])


@pytest.mark.parametrize(("rows", "numbers", "timeout"), [(500, 2, 30), (100_000, 9, 30), (200_000, 9, 45),
                                                         (LARGE_ROWS * 15, 19, 90)])
def test_tuning_is_on_with_a_time_budget_scaled_to_the_data(tmp_path: Path, rows: int, numbers: int,
                                                            timeout: int) -> None:
    draft(tmp_path, table(rows, categories=0, numbers=numbers))
    tuning = params_of(tmp_path)["tuning"]
    assert (tuning["enabled"], tuning["timeout_seconds"], tuning["n_trials"]) == (True, timeout, 50)
    config = loaded(tmp_path / "cfg")
    assert config.tuning.enabled and config.tuning.timeout_seconds == timeout


# --- config.yaml ------------------------------------------------------------------------------------------------

def server_port(out: Path) -> int:
    return int(yaml.safe_load((out / "config.yaml").read_text())["deployment"]["local"]["server_url"].rsplit(":", 1)[1])


def test_each_config_dir_gets_a_port_no_sibling_uses(tmp_path: Path) -> None:
    data = write_csv(tmp_path, table(50).to_csv(index=False))
    for name in ("a", "b", "c"):
        draft_config(str(data), "y", tmp_path / "dirs" / name)
    ports = [server_port(tmp_path / "dirs" / name) for name in ("a", "b", "c")]
    assert len(set(ports)) == 3 and 8000 not in ports  # 8000: include/config's
    assert "# guessed: a free port, used by no sibling config dir" in (tmp_path / "dirs" / "a" /
                                                                       "config.yaml").read_text()


def test_a_port_something_listens_on_is_skipped(tmp_path: Path) -> None:
    data = write_csv(tmp_path, table(50).to_csv(index=False))
    draft_config(str(data), "y", tmp_path / "first" / "cfg")
    chosen = server_port(tmp_path / "first" / "cfg")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", chosen))
        busy.listen()
        draft_config(str(data), "y", tmp_path / "second" / "cfg")  # no sibling: only the listener is in the way
    assert server_port(tmp_path / "second" / "cfg") != chosen


# --- the summary ------------------------------------------------------------------------------------------------

def test_the_summary_lists_every_guess_grouped(tmp_path: Path) -> None:
    n = 60
    frame = pd.DataFrame({"id": range(n), "note": [f"said {i} things" for i in range(n)],
                          "when": [f"2020-01-{1 + i % 28:02d}" for i in range(n)],
                          "size": [["S", "M", "L"][i % 3] for i in range(n)],
                          "colour": [["red", "blue"][i % 2] for i in range(n)], "x": np.arange(n) + 0.5,
                          "y": [None if i == 5 else i % 7 + 0.5 for i in range(n)]})
    result, _ = draft(tmp_path, frame)
    report = result.report()
    titles = [GROUP_TITLES[g] for g in ("data", "ids", "ignored", "datetimes", "ordinal", "categories", "numbers",
                                        "model")]
    positions = [report.index(f"\n{title} (") for title in titles]
    assert positions == sorted(positions)
    for column in frame.columns:
        assert sum(line.startswith(f"  {column}: ") for line in report.splitlines()) == 1, column
    assert report.splitlines()[0] == result.summary()


# --- realistic tables -------------------------------------------------------------------------------------------

def test_a_flights_like_table_drafts_what_a_careful_engineer_would_write(tmp_path: Path) -> None:
    result, schema = draft(tmp_path, flights_like(3000), target="arr_delay")
    cols = schema["columns"]
    assert schema["target"] == {"name": "arr_delay", "missing": "drop"}
    assert cols["year"] == {"dtype": "int", "role": "ignore"}
    assert (cols["hour"]["min"], cols["hour"]["max"], cols["minute"]["max"]) == (0, 23, 59)
    assert (cols["dep_time"]["min"], cols["dep_time"]["max"]) == (0, 2400)
    assert cols["time_hour"]["dtype"] == "datetime" and cols["time_hour"]["format"] == "%Y-%m-%d %H:%M:%S"
    assert cols["tailnum"] == {"dtype": "category", "nullable": True, "max_null_fraction": 0.05,
                               "encoding": "target"}
    assert cols["dest"] == {"dtype": "category", "encoding": "target"}  # 104 values: an open set
    assert cols["origin"]["allowed"] == ["EWR", "JFK", "LGA"]
    assert all(c.dtype != "string" for c in loaded(tmp_path / "cfg").schema.columns)
    frame = trains_its_data(tmp_path / "cfg", tmp_path / "run")
    assert frame["arr_delay"].notna().all()


def test_a_survival_like_table_drafts_and_passes_the_data_stages(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 1309
    sex = rng.choice(["male", "female"], n, p=[0.64, 0.36])
    pclass = rng.choice([1, 2, 3], n, p=[0.25, 0.21, 0.54])
    frame = pd.DataFrame({
        "pclass": pclass,
        "name": [f"{rng.choice(['Smith', 'Brown', 'Kelly'])}, Mr. {rng.choice(['John', 'James'])} {i}"
                 for i in range(n)],
        "sex": sex, "age": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0.2, 80, n).round(1)),
        "sibsp": rng.poisson(0.5, n), "ticket": [f"PC {rng.integers(1, 900)}" if rng.random() < 0.3
                                                 else str(rng.integers(1000, 400000)) for _ in range(n)],
        "fare": rng.gamma(1.5, 20, n).round(2),
        "cabin": np.where(rng.random(n) < 0.77, None, [f"{rng.choice(list('ABCDEF'))}{rng.integers(1, 150)}"
                                                       for _ in range(n)]),
        "embarked": np.where(rng.random(n) < 0.002, None, rng.choice(["C", "Q", "S"], n, p=[0.2, 0.1, 0.7])),
        "survived": (rng.random(n) < np.where(sex == "female", 0.7, 0.2)).astype(int),
    })
    result, schema = draft(tmp_path, frame, target="survived")
    cols = schema["columns"]
    assert result.task == "classification"
    assert cols["name"] == {"dtype": "string", "role": "ignore"}
    assert cols["ticket"] == {"dtype": "string", "role": "ignore"}
    assert cols["cabin"]["role"] == "ignore" and cols["cabin"]["max_null_fraction"] > 0.77
    assert cols["embarked"]["allowed"] == ["C", "Q", "S"] and cols["embarked"]["nullable"] is True
    assert cols["age"]["nullable"] is True
    params = params_of(tmp_path)
    assert params["model"]["family"] == "random_forest" and params["promotion"]["metric"] == "log_loss"
    trains_its_data(tmp_path / "cfg", tmp_path / "run")


def test_an_int_classification_target_has_the_classes_seen_as_its_range(tmp_path: Path) -> None:
    _, schema = draft(tmp_path, csv_of({"x": [i + 0.5 for i in range(30)], "y": [1 + i % 3 for i in range(30)]}))
    assert schema["columns"]["y"] == {"dtype": "int", "min": 1, "max": 3}
    assert "class labels 1 to 3" in read(tmp_path, "schema.yaml")


# --- the stand-ins for the held-out tables (bench/tables.py) ----------------------------------------------------

@pytest.mark.parametrize(("name", "rows"), [("flights", 30_000), ("ordinal", 54_000), ("survival", 1_309)])
def test_the_stand_ins_draft_and_pass_the_data_stages(tmp_path: Path, name: str, rows: int) -> None:
    stand_in = STAND_INS[name]
    result, schema = draft(tmp_path, stand_in.generate(rows, stand_in.seed), target=stand_in.target)
    cols, params = schema["columns"], params_of(tmp_path)
    assert result.task == stand_in.task
    if name == "flights":
        assert schema["target"] == {"name": "arr_delay", "missing": "drop"}
        assert cols["flight_id"] == {"dtype": "int", "role": "id"}
        assert cols["year"] == {"dtype": "int", "role": "ignore"}
        assert cols["time_hour"]["format"] == "%Y-%m-%d %H:%M:%S"
        assert (cols["hour"]["max"], cols["minute"]["max"], cols["dep_time"]["max"]) == (23, 59, 2400)
        assert cols["tailnum"]["encoding"] == "target" and "allowed" not in cols["dest"]
        assert params["model"]["family"] == "hist_gradient_boosting"
    elif name == "ordinal":
        assert cols["quality"]["categories"] == ["Basic", "Standard", "Comfort", "Superior", "Luxury"]
        assert cols["energy"]["categories"] == ["G", "F", "E", "D", "C", "B", "A"]
        assert cols["size_class"]["categories"] == ["S", "M", "L", "XL"]
        assert cols["district"]["dtype"] == "category"
    else:
        assert cols["passenger_id"]["role"] == "id"
        assert {cols[c]["role"] for c in ("name", "ticket", "cabin")} == {"ignore"}
        assert params["model"]["family"] == "random_forest" and params["promotion"]["metric"] == "log_loss"
    trains_its_data(tmp_path / "cfg", tmp_path / "run")
