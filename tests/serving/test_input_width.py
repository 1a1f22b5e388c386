"""Columns and values are capped (issue 22, finding 6): the model's width sets them. Values are counted before a
body is decoded or parsed, so a 10 MB body of a few wide rows never becomes millions of Python objects; columns are
the typed decoder's limits. Exactly at a cap passes, one over is a 413 naming the limit and the setting that
raises it."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings

from serving import body as body_module
from serving.limits import SPARE_VALUES, request_limits
from serving.settings import Settings, SettingsError
from tests.serving.test_input_limits import JSON_VALUES, error
from tests.support.bodies import MB10, WIDE, wide_body
from tests.support.bundles import GOOD_ROW

ROW = list(GOOD_ROW.values())
HEADER = ",".join(GOOD_ROW)


def test_the_caps_follow_the_model_width() -> None:
    toy = request_limits(10_000, 0, 0, 4)  # x1, x2, count, kind
    assert (toy.rows, toy.columns, toy.values) == (10_000, 20, 10_001 * 4 + SPARE_VALUES)
    assert request_limits(10_000, 0, 0, 30).columns == 60  # twice the width once that is more than 16 more
    assert request_limits(10_000, 0, 0, 10).columns == 26  # 16 more once that is more than twice the width
    set_by_hand = request_limits(100, 7, 99, 30)  # SERVING_MAX_COLUMNS, SERVING_MAX_VALUES
    assert (set_by_hand.columns, set_by_hand.values) == (7, 99)


def test_the_caps_are_settings() -> None:
    settings = Settings.from_env({"SERVING_MAX_COLUMNS": "50", "SERVING_MAX_VALUES": "5000"})
    assert (settings.max_columns, settings.max_values) == (50, 5000)
    assert (Settings.from_env({}).max_columns, Settings.from_env({}).max_values) == (0, 0)  # from the model
    for name in ("SERVING_MAX_COLUMNS", "SERVING_MAX_VALUES"):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: "-1"})


# --- what the value count counts -----------------------------------------------------------------------------------

def leaves(value: Any) -> int:
    """The values of a decoded body: numbers, strings, booleans, nulls and empty containers (a key and its value
    once)."""
    if isinstance(value, (list, dict)):
        children = list(value.values()) if isinstance(value, dict) else value
        return sum(map(leaves, children)) or 1
    return 1


@given(value=JSON_VALUES)
@settings(max_examples=300, deadline=None, database=None, derandomize=True)
def test_the_value_count_is_never_low(value: Any) -> None:
    """check_values counts a body's commas + 1, commas inside strings too: a body of more values than the cap is
    always refused, and one within its commas + 1 always passes."""
    for body in (json.dumps(value).encode(), msgspec.json.encode(value)):
        body_module.check_values(body, request_limits(10_000, 0, body.count(b",") + 1, 1))
        values = leaves(value)
        if values > 1:
            with pytest.raises(body_module.InputError, match="the limit is"):
                body_module.check_values(body, request_limits(10_000, 0, values - 1, 1))


# --- columns: at the cap passes, one more is a 413 ------------------------------------------------------------------

def bodies(columns: list[str], row: list[Any]) -> dict[str, tuple[str, str, bytes]]:
    record = dict(zip(columns, row))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([columns, row])
    return {
        "dataframe_split": ("/invocations", "application/json",
                            json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()),
        "dataframe_split (not numbers)": ("/invocations", "application/json", json.dumps(
            {"dataframe_split": {"columns": columns, "data": [row]}, "params": {}}).encode()),
        "dataframe_records": ("/invocations", "application/json",
                              json.dumps({"dataframe_records": [record]}).encode()),
        "instances": ("/invocations", "application/json", json.dumps({"instances": [record]}).encode()),
        "inputs (columnar)": ("/invocations", "application/json",
                              json.dumps({"inputs": {k: [v] for k, v in record.items()}}).encode()),
        "predict": ("/predict", "application/json", json.dumps(record).encode()),
        "predict list": ("/predict", "application/json", json.dumps([GOOD_ROW, record]).encode()),
        "csv": ("/invocations", "text/csv", out.getvalue().encode()),
    }


SHAPES = list(bodies(list(GOOD_ROW), ROW))


@pytest.mark.parametrize("shape", SHAPES)
def test_columns_at_the_cap_pass_and_one_more_is_413(make_app: Any, shape: str) -> None:
    client = make_app(max_columns=4).test_client()  # the toy model's four features
    path, content_type, body = bodies(list(GOOD_ROW), ROW)[shape]
    at_cap = client.post(path, data=body, content_type=content_type)
    assert at_cap.status_code == 200, at_cap.data[:300]
    path, content_type, body = bodies([*GOOD_ROW, "extra"], [*ROW, 1])[shape]
    over = client.post(path, data=body, content_type=content_type)
    assert over.status_code == 413, over.data[:300]
    err = error(over)
    assert err["code"] == "too_many_columns" and "the limit is 4 columns (SERVING_MAX_COLUMNS raises it)" in \
        err["message"], err


def test_by_default_a_few_unknown_columns_are_named_not_refused(client: FlaskClient) -> None:
    """The default cap leaves a margin (16 columns here): a client sending its id or a spare column is told which
    columns are unknown (422), not that its request is too large."""
    def records(extra: int) -> dict[str, Any]:
        return {"dataframe_records": [{**GOOD_ROW, **{f"c{i}": 0 for i in range(extra)}}]}

    response = client.post("/invocations", json=records(16))
    assert response.status_code == 422 and error(response)["code"] == "invalid_input"
    wider = client.post("/invocations", json=records(17))
    assert wider.status_code == 413 and "the limit is 20 columns" in error(wider)["message"]


def test_a_quoted_line_break_cannot_hide_a_wide_csv_header(client: FlaskClient) -> None:
    """The header's first line has no comma; the header itself, 25 fields: refused as the parser reads it."""
    header = '"x1\n",' + ",".join(f"c{i}" for i in range(24))
    response = client.post("/invocations", data=f"{header}\n" + ",".join(["0"] * 25) + "\n", content_type="text/csv")
    assert response.status_code == 413 and error(response)["code"] == "too_many_columns"


# --- values: at the cap passes, one more is a 413 -------------------------------------------------------------------

@pytest.mark.parametrize("shape, at_cap, over", [
    ("dataframe_split", {"dataframe_split": {"columns": list(GOOD_ROW), "data": [ROW] * 2}},  # 4 names, 8 values
     {"dataframe_split": {"columns": list(GOOD_ROW), "data": [ROW] * 2}, "params": {"p": 1}}),
    ("dataframe_records", {"dataframe_records": [GOOD_ROW] * 3},
     {"dataframe_records": [GOOD_ROW] * 3, "params": {"p": 1}}),
    ("inputs", {"inputs": {k: [v] * 3 for k, v in GOOD_ROW.items()}},
     {"inputs": {k: [v] * 3 for k, v in GOOD_ROW.items()}, "params": {"p": 1}}),
])
def test_values_at_the_cap_pass_and_one_more_is_413(make_app: Any, shape: str, at_cap: Any, over: Any) -> None:
    client = make_app(max_values=12).test_client()
    assert client.post("/invocations", json=at_cap).status_code == 200
    response = client.post("/invocations", json=over)
    assert response.status_code == 413, response.data[:300]
    err = error(response)
    assert err["code"] == "too_many_values" and "the limit is 12 values in one request (SERVING_MAX_VALUES raises " \
                                                "it)" in err["message"], err


@pytest.mark.parametrize("newline, last", [("\n", "\n"), ("\r\n", "\r\n"), ("\r", "\r"), ("\n", "")],
                         ids=["LF", "CRLF", "CR", "no-final-newline"])
def test_csv_values_at_the_cap_pass_and_one_more_is_413(make_app: Any, newline: str, last: str) -> None:
    """A header and two rows of four: 12 fields. A fifth field in a row is refused unparsed (413, not the parser's
    400 for a row longer than the header)."""
    client = make_app(max_values=12).test_client()
    line = ",".join(map(str, ROW))
    at_cap = newline.join([HEADER, line, line]) + last
    assert client.post("/invocations", data=at_cap, content_type="text/csv").status_code == 200
    over = client.post("/invocations", data=newline.join([HEADER, line, line + ",1"]) + last,
                       content_type="text/csv")
    assert over.status_code == 413 and error(over)["code"] == "too_many_values", over.data[:300]


# --- 10 MB wide bodies: refused before a parser builds anything -----------------------------------------------------

@pytest.fixture
def unparsable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding JSON or parsing CSV fails the request with a 500: a 413 then proves the body was measured first."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was decoded")

    # Only serving.body's view of the parsers: the test client still decodes the answer.
    refusing = SimpleNamespace(decode=refuse)
    monkeypatch.setattr(body_module, "decoders", lambda limits: SimpleNamespace(
        numeric_split=refusing, mlflow=refusing, records=refusing))
    monkeypatch.setattr(body_module, "msgspec", SimpleNamespace(json=SimpleNamespace(decode=refuse),
                                                                DecodeError=msgspec.DecodeError,
                                                                ValidationError=msgspec.ValidationError))
    monkeypatch.setattr(body_module, "json", SimpleNamespace(loads=refuse))
    monkeypatch.setattr(body_module, "csv", SimpleNamespace(reader=refuse, Error=csv.Error))


@pytest.mark.parametrize("shape", WIDE)
def test_10_mb_wide_bodies_are_413_before_parsing(client: FlaskClient, unparsable: None, shape: str) -> None:
    path, content_type, body = wide_body(shape)
    assert len(body) <= MB10
    response = client.post(path, data=body, content_type=content_type)
    assert response.status_code == 413, response.data[:300]
    err = error(response)
    assert err["code"] in ("too_many_columns", "too_many_values"), err
    assert ("SERVING_MAX_COLUMNS" if err["code"] == "too_many_columns" else "SERVING_MAX_VALUES") in err["message"]
