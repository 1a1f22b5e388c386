"""Request validation for every column type and role of schema.yaml: ordinals, open categories, datetimes, id (key)
and ignored columns, in every request form; the numeric fast paths only where they apply; the one datetime parser."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest

from serving import engine
from serving.body import Columns, InputError, NumericRows, csv_rows, mlflow_json, parse_json
from serving.contract import Contract
from serving.features import parse_datetimes
from serving.inputs import validate
from serving.limits import Limits
from tests.support import typed

CONTRACT = typed.contract("regression")
LIMITS, SMALL, ONE_ROW = Limits(100, 100, 10_000), Limits(10, 100, 10_000), Limits(1, 100, 10_000)
ROW = {"flight_id": 1001, "dep_delay": 12.5, "time_hour": "2013-05-01 10:00:00", "sched": 1367400000,
       "cut": "Good", "carrier": "UA", "dest": "D07", "tailnum": "N003", "note": "late crew"}
FEATURES = [name for name in ROW if name not in ("flight_id", "note")]


def bodies(rows: list[dict[str, Any]]) -> dict[str, tuple[Any, bool]]:
    """The same rows in every request form: (what validate is given, from_text)."""
    names = list(rows[0])
    split = json.dumps({"dataframe_split": {"columns": names, "data": [[r[n] for n in names] for r in rows]}})
    columnar = json.dumps({"inputs": {n: [r[n] for r in rows] for n in names}})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(names)
    writer.writerows([["" if r[n] is None else r[n] for n in names] for r in rows])
    return {"records": (parse_json(json.dumps(rows).encode(), LIMITS), False),
            "dataframe_records": (mlflow_json(json.dumps({"dataframe_records": rows}).encode(), LIMITS), False),
            "dataframe_split": (mlflow_json(split.encode(), LIMITS), False),
            "columnar": (mlflow_json(columnar.encode(), LIMITS), False),
            "csv": (csv_rows(out.getvalue().encode(), LIMITS), True)}


@pytest.mark.parametrize("form", ["records", "dataframe_records", "dataframe_split", "columnar", "csv"])
def test_every_type_and_role_in_every_request_form(form: str) -> None:
    rows = [ROW, {**ROW, "flight_id": 1002, "time_hour": "2013-05-01T12:30:00+02:00", "sched": None, "dest": None,
                  "carrier": None, "tailnum": "N999"}]
    given, from_text = bodies(rows)[form]
    batch = validate(given, CONTRACT, max_rows=100, from_text=from_text)
    assert list(batch.columns) == FEATURES  # the id and the ignored column never reach the model
    assert batch.columns["time_hour"].dtype == np.dtype("datetime64[ns]")
    # the column's own format and ISO 8601 with an offset, both in UTC; a unix number; missing stays NaT
    assert batch.columns["time_hour"].tolist() == np.array(["2013-05-01T10:00:00", "2013-05-01T10:30:00"],
                                                           dtype="datetime64[ns]").tolist()
    assert str(batch.columns["sched"][0]) == "2013-05-01T09:20:00.000000000" and np.isnat(batch.columns["sched"][1])
    assert batch.columns["cut"].tolist() == ["Good", "Good"]
    assert batch.columns["carrier"].tolist() == ["UA", None]
    assert batch.columns["dest"].tolist() == ["D07", None]
    assert batch.columns["tailnum"].tolist() == ["N003", "N999"]  # an open category takes a value never seen
    # the key as sent: a JSON number stays a number (also through the numbers-only decoder), CSV gives text
    assert batch.keys == {"flight_id": ["1001", "1002"] if from_text else [1001, 1002]}


def test_key_and_ignored_columns_are_optional_and_a_row_without_its_key_has_none() -> None:
    bare = {k: v for k, v in ROW.items() if k not in ("flight_id", "note")}
    assert validate([bare], CONTRACT, max_rows=10).keys == {}
    batch = validate([ROW, bare], CONTRACT, max_rows=10)
    assert batch.keys == {"flight_id": [1001, None]}
    with pytest.raises(InputError) as refused:
        validate([{**ROW, "other": 1}], CONTRACT, max_rows=10)
    assert refused.value.details == [{"row": 0, "field": "other", "problem": "unknown column"}]


NUMERIC = Contract.from_mlmodel({"metadata": {"feature_contract": {
    "task": "regression", "features": [{"name": "a", "dtype": "float"}, {"name": "b", "dtype": "int", "min": 0}],
    "keys": ["id"], "ignored": ["memo"]}}})


def test_numbers_only_split_takes_the_fast_path_and_with_a_key_the_general_one() -> None:
    plain = mlflow_json(b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1.5, 2], [3, 4]]}}', SMALL)
    assert isinstance(plain, NumericRows)
    batch = validate(plain, NUMERIC, max_rows=10)
    assert batch.numeric is not None and batch.numeric.tolist() == [[1.5, 2.0], [3.0, 4.0]] and batch.keys == {}
    keyed = mlflow_json(b'{"dataframe_split": {"columns": ["id", "a", "b", "memo"], "data": [[17, 1.5, 2, 0]]}}', SMALL)
    assert isinstance(keyed, NumericRows)  # every value a number: msgspec decoded them all as floats
    batch = validate(keyed, NUMERIC, max_rows=10)
    assert batch.keys == {"id": [17]} and type(batch.keys["id"][0]) is int  # as sent, not 17.0
    assert batch.columns["a"].tolist() == [1.5] and "memo" not in batch.columns and "id" not in batch.columns
    columnar = validate(Columns({"id": ["x"], "a": [1.0], "b": [2]}, 1), NUMERIC, max_rows=10)
    assert columnar.numeric is not None and columnar.keys == {"id": ["x"]}  # plain numbers: still one array


@pytest.mark.parametrize("change, field, problem", [
    ({"time_hour": "yesterday"}, "time_hour", "not a date-time: expected text in the format '%Y-%m-%d %H:%M:%S' "
                                             "or ISO 8601, got 'yesterday'"),
    ({"time_hour": 1367400000}, "time_hour", "expected text in the format '%Y-%m-%d %H:%M:%S' or ISO 8601, got int"),
    ({"time_hour": "1677-01-01"}, "time_hour", "not a date-time"),  # before what datetime64[ns] holds
    ({"time_hour": "2014-01-01 00:00:00"}, "time_hour", "outside the schema's range [2013-01-01T00:00:00, "
                                                       "2013-12-31T23:00:00]"),
    ({"time_hour": None}, "time_hour", "missing value (the column is not nullable)"),
    ({"sched": "2013-05-01"}, "sched", "not a date-time: expected a unix timestamp (a number)"),
    ({"sched": True}, "sched", "expected a unix timestamp (a number), got a boolean"),
    ({"sched": 1e300}, "sched", "not a date-time"),
    ({"cut": "Bad"}, "cut", "not one of the categories ['Fair', 'Good', 'Very Good']"),
    ({"cut": None}, "cut", "missing value (the column is not nullable)"),
    ({"cut": 1}, "cut", "not one of the categories"),
    ({"dest": {"code": "JFK"}}, "dest", "expected text or a number, got an object"),
    ({"dest": ["JFK"]}, "dest", "expected text or a number, got a list"),
    ({"dest": True}, "dest", "expected text or a number, got a boolean"),
    ({"dest": "\x00missing"}, "dest", "text with a NUL character"),  # the compiled model's marker of a missing value
    ({"flight_id": {"id": 1}}, "flight_id", "a key is text or a number, got an object"),
    ({"flight_id": [1]}, "flight_id", "a key is text or a number, got a list"),
    ({"flight_id": False}, "flight_id", "a key is text or a number, got a boolean"),
])
def test_a_bad_value_is_refused_naming_its_row_and_field(change: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(InputError) as refused:
        validate([ROW, {**ROW, **change}], CONTRACT, max_rows=10)
    assert refused.value.status == 422
    assert refused.value.details[0]["row"] == 1 and refused.value.details[0]["field"] == field
    assert refused.value.details[0]["problem"].startswith(problem), refused.value.details
    assert len(refused.value.details) == 1  # one problem, reported once


def test_open_categories_take_numbers_as_given_and_nan_as_missing() -> None:
    batch = validate([{**ROW, "dest": 5}, {**ROW, "dest": 2.5}, {**ROW, "dest": float("nan")}], CONTRACT,
                     max_rows=10)
    assert batch.columns["dest"].tolist() == [5, 2.5, None]
    with pytest.raises(InputError, match="infinite"):
        validate([{**ROW, "dest": float("inf")}], CONTRACT, max_rows=10)


def test_ordinal_values_match_by_json_type_and_csv_text_by_text() -> None:
    contract = Contract.from_mlmodel({"metadata": {"feature_contract": {"task": "regression", "features": [
        {"name": "grade", "dtype": "ordinal", "allowed": [1, 2, 3]}]}}})
    assert validate([{"grade": 2}], contract, max_rows=1).columns["grade"].tolist() == [2]
    with pytest.raises(InputError, match="not one of the categories"):
        validate([{"grade": "2"}], contract, max_rows=1)
    from_csv = validate(csv_rows(b"grade\n2\n", ONE_ROW), contract, max_rows=1, from_text=True)
    assert from_csv.columns["grade"].tolist() == [2]


def test_datetimes_outside_the_range_are_flagged_when_asked() -> None:
    batch = validate([{**ROW, "time_hour": "2014-06-01 00:00:00"}], CONTRACT, max_rows=1, out_of_range="flag")
    assert batch.warnings == [{"row": 0, "field": "time_hour", "problem": "outside the schema's range "
                                                                          "[2013-01-01T00:00:00, 2013-12-31T23:00:00]"}]
    assert str(batch.columns["time_hour"][0]).startswith("2014-06-01")


def test_the_example_and_edge_rows_are_valid_requests_covering_every_type() -> None:
    assert validate([CONTRACT.example_row()], CONTRACT, max_rows=1).n_rows == 1
    known = {"dest": ["D01", "D02"], "tailnum": ["N001"]}
    rows = engine.edge_rows(CONTRACT, [], known)
    batch = validate(rows, CONTRACT, max_rows=len(rows))
    times = batch.columns["time_hour"]
    assert times.min() == np.datetime64("2013-01-01T00:00:00") and times.max() == np.datetime64("2013-12-31T23:00:00")
    assert len(set(times.astype("datetime64[h]").astype(int) % 24)) > 3  # the hour of day varies too
    assert np.isnat(batch.columns["sched"]).any() and not np.isnat(batch.columns["sched"]).all()
    assert {"Fair", "Good", "Very Good"} <= set(batch.columns["cut"])
    assert {"D01", "D02", None} <= set(batch.columns["dest"])
    assert set(batch.columns["dest"]) - {"D01", "D02", None, CONTRACT.example_row()["dest"]}  # one never seen
    assert {"N001", None} <= set(batch.columns["tailnum"])


@pytest.mark.parametrize("fmt, values, expected", [
    ("%d/%m/%Y %H:%M", ["01/02/2013 10:00", "2013-02-01T10:00:00Z", "2013-02-01T11:00:00+01:00", " ", None],
     ["2013-02-01T10:00", "2013-02-01T10:00", "2013-02-01T10:00", "NaT", "NaT"]),
    ("unix", [1359712800, "1359712800", 1359712800.5, np.nan], ["2013-02-01T10:00", "2013-02-01T10:00",
                                                                  "2013-02-01T10:00", "NaT"]),
    ("unix_ms", [1359712800000], ["2013-02-01T10:00"]),
    (None, ["2013-02-01", "2013-02-01T10:00:00.123456"], ["2013-02-01T00:00", "2013-02-01T10:00"]),
])
def test_parse_datetimes_reads_the_format_and_iso_8601_in_utc(fmt: str | None, values: list[Any],
                                                              expected: list[str]) -> None:
    moments, invalid = parse_datetimes(values, fmt)
    assert moments.dtype == np.dtype("datetime64[ns]") and not invalid.any()
    assert np.datetime_as_string(moments, unit="m").tolist() == expected


def test_parse_datetimes_calls_what_it_cannot_read_invalid_and_never_raises() -> None:
    values = ["1677-01-01", "2262-05-01", "0001-01-01", "99999-01-01", "x", 5, True, {"a": 1}, [1], 10 ** 30,
              float("inf")]
    for fmt in ("%Y-%m-%d %H:%M:%S", None, "unix", "unix_ms"):
        moments, invalid = parse_datetimes(values, fmt)
        read = ~invalid
        assert read.tolist() == [fmt in ("unix", "unix_ms") and v == 5 and v is not True for v in values], fmt
        assert np.isnat(moments[invalid]).all()
        assert len(moments) == len(values)  # a list value is one row, not a second dimension
    # The column's format misses one value that ISO 8601 reads at another time unit: no error, both read.
    moments, invalid = parse_datetimes(["2013-01-01 05:00:00", "2013-01-01T05:00:00.123456"], "%Y-%m-%d %H:%M:%S")
    assert not invalid.any() and str(moments[1]) == "2013-01-01T05:00:00.123456000"
