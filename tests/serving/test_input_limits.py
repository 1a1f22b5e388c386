"""Bodies are bounded: their values (413) are counted from the bytes before they are decoded, so a 10 MB body never
becomes a million Python objects; rows (413) are the typed decoder's limits; a deeply nested body is a 400, never a
RecursionError."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import body as body_module
from serving.body import MAX_DEPTH, _depth
from tests.support.bodies import MB10, ROW, SHAPES, large_body, nested, repeated
from tests.support.bundles import GOOD_ROW


def error(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


# --- depth, counted on the decoded value -------------------------------------------------------------------------

# Strings full of brackets, commas, quotes, backslashes (escaped in JSON) and multi-byte characters.
TRICKY_TEXT = st.text(st.sampled_from('[]{},:"\\ a\n\té€😀'), max_size=6)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | TRICKY_TEXT,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(TRICKY_TEXT, children, max_size=6),
    max_leaves=60)


def reference(value: Any) -> int:
    """The depth of a decoded value, recursively."""
    if not isinstance(value, (list, dict)):
        return 0
    children = list(value.values()) if isinstance(value, dict) else value
    return 1 + max((reference(child) for child in children), default=0)


@given(value=JSON_VALUES)
@settings(max_examples=400, deadline=None, database=None, derandomize=True)
def test_depth_is_counted_as_a_recursive_walk_does(value: Any) -> None:
    assert _depth(value) == reference(value)


# --- nesting: 400, never a RecursionError ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("path, template", [
    ("/predict", "{}"),
    ("/predict", '{{"x1": {}, "x2": -1.0, "count": 3, "kind": "p"}}'),
    ("/invocations", "{}"),
    ("/invocations", '{{"dataframe_records": [{}]}}'),
    ("/invocations", '{{"inputs": {{"x1": {}}}}}'),
    ("/invocations", '{{"dataframe_split": {{"columns": ["x1"], "data": [[{}]]}}}}'),
    ("/invocations", '{{"dataframe_records": [{{"x1": 0.5}}], "params": {{"p": {}}}}}'),
    ("/invocations", '{{"dataframe_records": [{{"x1": NaN}}], "params": {{"p": {}}}}}'),  # the json.loads path
], ids=["bare", "in-a-value", "bare-invocations", "a-record", "a-column", "a-split-row", "params", "with-NaN"])
def test_deep_nesting_is_400_not_500(client: FlaskClient, path: str, template: str, kind: str) -> None:
    response = client.post(path, data=template.format(nested(10_000, kind)), content_type="application/json")
    assert response.status_code == 400, response.data[:300]
    err = error(response)
    assert err["code"] == "too_deeply_nested" and str(MAX_DEPTH) in err["message"]


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_up_to_the_cap_reaches_the_parser(client: FlaskClient, kind: str) -> None:
    """MAX_DEPTH levels are decoded (and refused as a wrong shape); one more is refused undecoded."""
    at_cap = client.post("/invocations", data=nested(MAX_DEPTH, kind), content_type="application/json")
    assert at_cap.status_code == 400 and error(at_cap)["code"] == "invalid_request"
    over = client.post("/invocations", data=nested(MAX_DEPTH + 1, kind), content_type="application/json")
    assert over.status_code == 400 and error(over)["code"] == "too_deeply_nested"


@pytest.mark.parametrize("body, code", [
    ("[" * 10_000, "too_deeply_nested"),  # never closed
    ('["' + "[" * 10_000, "malformed_json"),  # inside a string never closed
    ('"\\"' + "[" * 10_000 + '"', "invalid_request"),  # inside a string that starts with an escaped quote: a string
    ("]" * 10_000 + "[" * 10_000, "malformed_json"),
    (json.dumps("[," * 20_000), "invalid_request"),  # brackets and commas only inside a string
])
def test_odd_deep_bodies_are_400(client: FlaskClient, body: str, code: str) -> None:
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 400 and error(response)["code"] == code


def test_only_utf8_json_is_read(client: FlaskClient) -> None:
    """The scan reads UTF-8 bytes; json.loads would also guess UTF-16 or -32, where a bracket is not one byte."""
    response = client.post("/predict", data=json.dumps(GOOD_ROW).encode("utf-16"), content_type="application/json")
    assert response.status_code == 400 and error(response)["code"] == "malformed_json"
    with_bom = client.post("/predict", data=b"\xef\xbb\xbf" + json.dumps(GOOD_ROW).encode(),
                           content_type="application/json")
    assert with_bom.status_code == 200


# --- rows: counted before anything is built ---------------------------------------------------------------------------

@pytest.fixture
def undecodable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a JSON body fails the request with a 500: a 413 then proves the body was refused before it."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was decoded")

    # Only serving.body's view of the decoders: the test client still decodes the answer.
    refusing = SimpleNamespace(decode=refuse)
    monkeypatch.setattr(body_module, "decoders", lambda limits: SimpleNamespace(
        numeric_split=refusing, mlflow=refusing, records=refusing))
    monkeypatch.setattr(body_module, "msgspec", SimpleNamespace(json=SimpleNamespace(decode=refuse),
                                                                DecodeError=msgspec.DecodeError,
                                                                ValidationError=msgspec.ValidationError))
    monkeypatch.setattr(body_module, "json", SimpleNamespace(loads=refuse))


@pytest.mark.parametrize("shape", SHAPES)
def test_10_mb_of_rows_is_413_before_decoding(client: FlaskClient, undecodable: None, shape: str) -> None:
    path, content_type, body = large_body(shape)
    assert len(body) <= MB10
    started = time.perf_counter()
    response = client.post(path, data=body, content_type=content_type)
    assert response.status_code == 413, response.data[:300]
    err = error(response)  # CSV counts its lines; JSON its values (its commas), without telling rows from columns
    if content_type == "text/csv":
        assert err["code"] == "too_many_rows" and "the limit is 10000" in err["message"]
    else:
        assert err["code"] == "too_many_values" and "SERVING_MAX_VALUES" in err["message"]
    assert time.perf_counter() - started < 3.0


@pytest.mark.parametrize("payload", [
    [GOOD_ROW] * 10_001,
    {"dataframe_records": [GOOD_ROW] * 10_001},
    {"instances": [GOOD_ROW] * 10_001},
    {"inputs": {name: [value] * 10_001 for name, value in GOOD_ROW.items()}},
    {"dataframe_split": {"columns": list(GOOD_ROW), "data": [list(GOOD_ROW.values())] * 10_001}},
], ids=["predict-list", "dataframe_records", "instances", "columnar", "dataframe_split"])
def test_one_row_over_the_limit_is_413(client: FlaskClient, payload: Any) -> None:
    """Within the values cap, the typed decoder's Meta limit refuses the 10,001st row."""
    path = "/predict" if isinstance(payload, list) else "/invocations"
    response = client.post(path, data=json.dumps(payload), content_type="application/json")
    assert response.status_code == 413 and error(response)["code"] == "too_many_rows"
    assert "the limit is 10000 (SERVING_MAX_ROWS raises it)" in error(response)["message"]


@pytest.mark.parametrize("payload", [
    {"inputs": {name: [value] * 4 for name, value in GOOD_ROW.items()}},
    {"dataframe_split": {"columns": list(GOOD_ROW), "data": [list(GOOD_ROW.values())] * 4}},
    {"dataframe_records": [GOOD_ROW] * 4},
], ids=["columnar", "dataframe_split", "dataframe_records"])
def test_a_small_row_limit_counts_rows_exactly(make_app: Any, payload: Any) -> None:
    client = make_app(max_rows=3).test_client()
    response = client.post("/invocations", json=payload)
    assert response.status_code == 413 and error(response)["code"] == "too_many_rows"
    assert "more than 3 rows in one request; the limit is 3" in error(response)["message"]


def test_a_small_row_limit_does_not_refuse_wide_containers(make_app: Any) -> None:
    """Containers that are not lists of rows (a record, a dataframe_split row, params) are not held to max_rows."""
    client = make_app(max_rows=1).test_client()
    params = {"lists": [[0]] * 40}  # more than max_rows items
    split = {"dataframe_split": {"columns": list(GOOD_ROW), "data": [list(GOOD_ROW.values())]}, "params": params}
    assert client.post("/invocations", json=split).status_code == 200
    assert client.post("/invocations", json={"dataframe_records": [GOOD_ROW], "params": params}).status_code == 200


def test_csv_stops_reading_one_row_past_the_limit(make_app: Any) -> None:
    client = make_app(max_rows=3).test_client()
    header = ",".join(GOOD_ROW) + "\n"
    ok = client.post("/invocations", data=header + "0.5,-1.0,3,p\n" * 3, content_type="text/csv")
    assert ok.status_code == 200 and len(ok.json["predictions"]) == 3
    # Past the row over the limit (and past the 8 KB the text reader decodes at a time) the body is not UTF-8:
    # a 413, not a 400, shows that reading stopped there.
    over = client.post("/invocations", data=(header + "0.5,-1.0,3,p\n" * 4 + "x" * 20_000 + "\n").encode() + b"\xff",
                       content_type="text/csv")
    assert over.status_code == 413 and error(over)["code"] == "too_many_rows"


def test_nan_bodies_are_counted_too(client: FlaskClient, undecodable: None) -> None:
    """A NaN literal sends the body to json.loads; its values were counted before either decoder."""
    body = repeated('{"dataframe_records":[', ROW.replace("0.5", "NaN"), "]}", size=2_000_000)
    response = client.post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 413 and error(response)["code"] == "too_many_values"


def test_nan_rows_over_the_limit_are_counted_after_decoding(make_app: Any) -> None:
    """Within the values cap, a NaN body is decoded by json.loads, untyped: validation counts its rows."""
    client = make_app(max_rows=3).test_client()
    body = '{"dataframe_records":[' + ",".join([ROW.replace("0.5", "NaN")] * 4) + "]}"
    response = client.post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 413 and "4 rows in one request; the limit is 3" in error(response)["message"]


# --- column-wise input stays column-wise ------------------------------------------------------------------------------

def test_columnar_problems_are_named_once_per_column(client: FlaskClient) -> None:
    columns = {name: [value] * 1000 for name, value in GOOD_ROW.items()}
    columns["extra"] = [1] * 1000
    del columns["x2"]
    response = client.post("/invocations", json={"inputs": columns})
    assert response.status_code == 422
    assert error(response)["details"] == [{"field": "extra", "problem": "unknown column"},
                                          {"field": "x2", "problem": "missing column"}]


def test_columnar_values_are_checked_per_row(client: FlaskClient) -> None:
    columns = {name: [value] * 3 for name, value in GOOD_ROW.items()}
    columns["x2"] = [-1.0, math.inf, "1.5"]
    response = client.post("/invocations", data=json.dumps({"inputs": columns}), content_type="application/json")
    assert response.status_code == 422
    assert {(d["row"], d["field"]) for d in error(response)["details"]} == {(1, "x2"), (2, "x2")}


def test_params_are_held_to_the_depth_limit_too(client: FlaskClient) -> None:
    """The typed decoder takes params as any JSON object; their depth is counted after it: the body's 32 levels
    pass, 33 are a 400, as for a body of any other shape."""
    def body(levels: int) -> str:  # the body object and params add two levels
        return json.dumps({"dataframe_records": [GOOD_ROW], "params": {"p": json.loads(nested(levels, "list"))}})

    assert client.post("/invocations", data=body(MAX_DEPTH - 2), content_type="application/json").status_code == 200
    over = client.post("/invocations", data=body(MAX_DEPTH - 1), content_type="application/json")
    assert over.status_code == 400 and error(over)["code"] == "too_deeply_nested"
