"""`python main.py init` drafts: dtypes, ranges, task guesses and refusals, on tiny CSVs written to tmp_path."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from include.ml.drafting import (
    DraftError,
    DraftResult,
    OutputExistsError,
    RareClassError,
    UnknownTargetError,
    draft_config,
)
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


def draft(tmp_path: Path, text: str, target: str = "y", **kwargs: Any) -> tuple[DraftResult, dict[str, Any]]:
    """Draft from `text`; return the result and the loaded schema.yaml."""
    result = draft_config(str(write_csv(tmp_path, text)), target, tmp_path / "cfg", **kwargs)
    return result, yaml.safe_load((tmp_path / "cfg" / "schema.yaml").read_text())


def read(tmp_path: Path, name: str) -> str:
    return (tmp_path / "cfg" / name).read_text()


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
    assert cols["c"] == {"dtype": "category", "allowed": ["blue", "green", "red"]}
    assert cols["s"] == {"dtype": "string"}
    assert cols["b"] == {"dtype": "category", "allowed": [False, True]}
    # whole numbers with a gap: pandas reads them as float, and int columns cannot be nullable
    assert cols["w"]["dtype"] == "float" and cols["w"]["nullable"] is True
    assert "whole numbers with missing values, kept float" in read(tmp_path, "schema.yaml")
    assert (result.rows, result.columns, result.task) == (12, 7, "regression")
    assert any(g.startswith("s: {dtype: string}") for g in result.guesses)


def test_category_thresholds(tmp_path: Path) -> None:
    # 3 distinct values in 4 rows is more than half the rows: text, not a category
    _, schema = draft(tmp_path, csv_of({"t": ["a", "b", "c", "a"], "y": [1.5, 2.5, 3.5, 4.5]}))
    assert schema["columns"]["t"] == {"dtype": "string"}
    # 51 distinct values are too many even in many rows
    many = [f"v{n % 51}" for n in range(204)]
    _, schema = draft(tmp_path / "b", csv_of({"t": many, "y": [n + 0.5 for n in range(204)]}))
    assert schema["columns"]["t"] == {"dtype": "string"}
    few = [f"v{n % 50}" for n in range(200)]
    _, schema = draft(tmp_path / "c", csv_of({"t": few, "y": [n + 0.5 for n in range(200)]}))
    assert schema["columns"]["t"]["dtype"] == "category" and len(schema["columns"]["t"]["allowed"]) == 50


@pytest.mark.parametrize(("missing", "rows", "expected"), [(1, 100, 0.05), (10, 100, 0.2), (3, 50, 0.12),
                                                            (7, 100, 0.14), (60, 100, 0.9)])
def test_max_null_fraction_is_twice_the_observed_share(tmp_path: Path, missing: int, rows: int,
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
    x = [float(v) for v in values] * 3  # floats, so the int rounding does not apply
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
    assert any(g.startswith("data_source.separator") for g in result.guesses)


def test_a_given_separator_wins_and_is_not_marked_as_guessed(tmp_path: Path) -> None:
    result, schema = draft(tmp_path, "a;b,y\n1;2,3.5\n4;5,6.5\n7;8,9.5\n", separator=",")
    assert list(schema["columns"]) == ["a;b", "y"]
    config = read(tmp_path, "config.yaml")
    assert 'separator: ","\n' in config
    assert not any(g.startswith("data_source.separator") for g in result.guesses)


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
    params = yaml.safe_load(read(tmp_path, "params.yaml"))
    if task == "classification":
        assert params["promotion"]["metric"] == "f1_macro"
        assert params["model"]["hyperparameters"] == {"n_estimators": 100}
        other = "regression"
    else:
        assert params["promotion"]["metric"] == "rmse"
        assert params["model"]["hyperparameters"] == {"n_estimators": 100, "min_samples_leaf": 2}
        other = "classification"
    # the other task is only possible for an int target
    assert (f"use --task {other} to override" in read(tmp_path, "schema.yaml")) == reason.startswith("int")


def test_a_forced_task_wins(tmp_path: Path) -> None:
    result, schema = draft(tmp_path, csv_of({"x": [0.5, 1.5, 2.5, 3.5], "y": [1, 2, 1, 2]}), task="regression")
    assert schema["task"] == result.task == "regression"
    assert "task: regression  # given with --task" in read(tmp_path, "schema.yaml")
    assert not any(g.startswith("task:") for g in result.guesses)
    assert yaml.safe_load(read(tmp_path, "params.yaml"))["promotion"]["metric"] == "rmse"


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


def test_a_target_with_missing_values_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="1 missing values"):
        draft(tmp_path, csv_of({"x": [0.5, 1.5, 2.5], "y": [1.5, None, 2.5]}))


def test_a_single_column_file_asks_for_the_separator(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="one column"):
        draft(tmp_path, "y\n1\n2\n3\n")


def test_yaml_comments_and_headers(tmp_path: Path) -> None:
    data = write_csv(tmp_path, csv_of({"x": [0.5, 1.5, 2.5, 3.5], "y": [1, 2, 1, 2]}), "Penguins Data.csv")
    result = draft_config(str(data), "y", tmp_path / "cfg")
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
    assert yaml.safe_load(read(tmp_path, "config.yaml")) == {
        "data_source": {"uri": str(data), "separator": ","},  # outside the project: absolute
        "mlflow": {"experiment_name": "my-data-v2", "registered_model_name": "my-data-v2"},
        "deployment": {"target": "local",
                       "local": {"model_store": "models/my-data-v2", "server_url": "http://127.0.0.1:8000"}},
    }
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
    assert params["promotion"]["metric"] == "f1_macro"
    assert (result.rows, result.columns, schema["min_rows"]) == (1599, 12, 100)
    for name, spec in schema["columns"].items():
        assert spec["dtype"] == ("int" if name == "quality" else "float")
        assert "nullable" not in spec
        assert frame[name].between(spec["min"], spec["max"]).all(), name
    # the loader accepts the draft as it is
    from include.ml.configuration import ConfigurationManager

    loaded = ConfigurationManager(out, env={}).config
    assert loaded.schema.task == "classification" and loaded.data_source.separator == ";"
