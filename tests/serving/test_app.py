"""Every endpoint through Flask's test client, on real bundles; every class of bad input gets a clear 4xx."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from serving import store as store_mod
from tests.support.bundles import GOOD_ROW
from tests.support.pointers import point

ROWS = [GOOD_ROW, {**GOOD_ROW, "x1": None, "kind": "q", "count": 40}]


def error(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


# --- happy paths -----------------------------------------------------------------------------------------------

def test_predict_one_record_and_a_list(client: FlaskClient) -> None:
    one = client.post("/predict", json=GOOD_ROW)
    many = client.post("/predict", json=ROWS)
    assert one.status_code == many.status_code == 200
    assert one.json["model"] == {"name": "toy", "version": "1"} and one.headers["X-Model-Version"] == "1"
    assert one.headers["X-Model-Name"] == "toy"
    assert len(many.json["predictions"]) == 2
    assert many.json["predictions"][0] == pytest.approx(one.json["predictions"][0])
    assert "probabilities" not in one.json  # regression


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": list(GOOD_ROW), "data": [list(r.values()) for r in ROWS]}},
    {"dataframe_records": ROWS},
    {"instances": ROWS},
    {"inputs": ROWS},
    {"inputs": {k: [r[k] for r in ROWS] for k in GOOD_ROW}},  # columnar
    {"dataframe_records": ROWS, "params": {"anything": 1}},
], ids=["split", "records", "instances", "inputs", "inputs-columnar", "with-params"])
def test_invocations_speaks_every_mlflow_format(client: FlaskClient, payload: dict[str, Any]) -> None:
    expected = client.post("/predict", json=ROWS).json["predictions"]
    response = client.post("/invocations", json=payload)
    assert response.status_code == 200, response.json
    assert response.json == {"predictions": pytest.approx(expected)}


def test_invocations_csv(client: FlaskClient) -> None:
    csv = "x1,x2,count,kind\n0.5,-1.0,3,p\n,-1.0,40,q\n"
    response = client.post("/invocations", data=csv, content_type="text/csv")
    assert response.status_code == 200, response.json
    assert response.json["predictions"] == pytest.approx(client.post("/predict", json=ROWS).json["predictions"])


def test_nan_from_json_dumps_is_a_missing_value_in_a_nullable_column(client: FlaskClient) -> None:
    body = json.dumps({"dataframe_records": [{**GOOD_ROW, "x1": math.nan}]})  # Python writes the NaN literal
    response = client.post("/invocations", data=body, content_type="application/json")
    assert response.status_code == 200
    assert response.json["predictions"] == pytest.approx(
        client.post("/predict", json={**GOOD_ROW, "x1": None}).json["predictions"])


def test_classifier_gives_class_probabilities(make_app: Any, store: Path) -> None:
    point(store, "c1")
    response = make_app().test_client().post("/predict", json=ROWS)
    assert response.status_code == 200
    assert all(p in ("a", "b", "c") for p in response.json["predictions"])
    for probs in response.json["probabilities"]:
        assert set(probs) == {"a", "b", "c"} and sum(probs.values()) == pytest.approx(1.0)


def test_health_ready_version(client: FlaskClient) -> None:
    assert client.get("/health").json["status"] == "ok"
    assert client.get("/ready").json == {"status": "ready", "version": "1"}
    info = client.get("/version").json
    assert info["name"] == "toy" and info["version"] == "1" and info["run_id"] == "run-1"
    assert info["metrics"] == {"test_rmse": 0.1} and len(info["schema_hash"]) == 64 and info["refused"] is None


def test_metrics_count_requests_predictions_and_loads(client: FlaskClient) -> None:
    client.post("/predict", json=ROWS)
    client.post("/predict", json={"nope": 1})
    text = client.get("/metrics").data.decode()
    assert 'serving_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'serving_requests_total{endpoint="/predict",method="POST",status="422"} 1.0' in text
    assert 'serving_predictions_total{model="toy",version="1"} 2.0' in text
    assert 'serving_model_loads_total{outcome="loaded",version="1"} 1.0' in text
    assert "serving_request_seconds_bucket" in text


def test_random_paths_do_not_create_metric_labels(client: FlaskClient) -> None:
    assert client.get("/no/such/page").status_code == 404
    assert 'endpoint="unmatched"' in client.get("/metrics").data.decode()
    assert "/no/such/page" not in client.get("/metrics").data.decode()


def test_index_page_has_a_field_per_feature(client: FlaskClient) -> None:
    html = client.get("/").data.decode()
    for name in GOOD_ROW:
        assert f'name="{name}"' in html
    assert 'min="-10' in html and 'max="100' in html


# --- bad input: each class gets a clear, specific 4xx and never a stack trace ----------------------------------------

@pytest.mark.parametrize("record, code, field, problem", [
    ({**GOOD_ROW, "extra": 1}, "invalid_input", "extra", "unknown column"),
    ({k: v for k, v in GOOD_ROW.items() if k != "x2"}, "invalid_input", "x2", "missing column"),
    ({**GOOD_ROW, "x2": "1.5"}, "invalid_input", "x2", "expected a number, got a string"),
    ({**GOOD_ROW, "x2": True}, "invalid_input", "x2", "expected a number, got a boolean"),
    ({**GOOD_ROW, "x2": None}, "invalid_input", "x2", "missing value"),
    ({**GOOD_ROW, "count": 2.5}, "invalid_input", "count", "expected an integer"),
    ({**GOOD_ROW, "x2": 10.5}, "invalid_input", "x2", "outside the schema's range"),
    ({**GOOD_ROW, "kind": "z"}, "invalid_input", "kind", "not one of the allowed values"),
    ({**GOOD_ROW, "kind": ["p"]}, "invalid_input", "kind", "not one of the allowed values"),
], ids=["unknown", "missing", "string-for-number", "bool-for-number", "null", "non-integer", "out-of-range",
        "unknown-category", "list-for-category"])
def test_schema_violations_name_field_and_row(client: FlaskClient, record: dict[str, Any], code: str, field: str,
                                              problem: str) -> None:
    response = client.post("/predict", json=[GOOD_ROW, record])
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == code
    assert any(d["row"] == 1 and d["field"] == field and problem in d["problem"] for d in err["details"]), err
    assert "Traceback" not in response.data.decode()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_rejected_where_not_allowed(client: FlaskClient, literal: str) -> None:
    body = json.dumps(GOOD_ROW).replace('"x2": -1.0', f'"x2": {literal}')
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 422
    assert error(response)["details"][0]["field"] == "x2"


def test_infinity_rejected_even_in_a_nullable_column(client: FlaskClient) -> None:
    body = json.dumps(GOOD_ROW).replace('"x1": 0.5', '"x1": Infinity')
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 422 and "infinite" in error(response)["details"][0]["problem"]


def test_out_of_range_can_be_flagged_instead_of_rejected(make_app: Any) -> None:
    client = make_app(out_of_range="flag").test_client()
    response = client.post("/predict", json=[GOOD_ROW, {**GOOD_ROW, "x2": 50.0}])
    assert response.status_code == 200 and len(response.json["predictions"]) == 2
    assert response.json["warnings"] == [{"row": 1, "field": "x2", "problem": "outside the schema's range [-10, 10]"}]


def test_malformed_json(client: FlaskClient) -> None:
    response = client.post("/predict", data=b'{"x1": 0.5,', content_type="application/json")
    assert response.status_code == 400 and error(response)["code"] == "malformed_json"


@pytest.mark.parametrize("payload, fragment", [
    ([], "non-empty list"),
    ("just a string", "non-empty list"),
    ([GOOD_ROW, 5], "row 1 is not a JSON object"),
])
def test_wrong_shapes_for_predict(client: FlaskClient, payload: Any, fragment: str) -> None:
    response = client.post("/predict", json=payload)
    assert response.status_code == 400 and fragment in error(response)["message"]


@pytest.mark.parametrize("payload, fragment", [
    ({"rows": [GOOD_ROW]}, "expected exactly one of"),
    ({"dataframe_records": [GOOD_ROW], "instances": [GOOD_ROW]}, "expected exactly one of"),
    ({"dataframe_split": {"columns": ["x1"]}}, "'columns' and 'data'"),
    ({"dataframe_split": {"columns": ["x1", "x1"], "data": [[1, 2]]}}, "distinct"),
    ({"dataframe_split": {"columns": ["x1", "x2"], "data": [[1]]}}, "row 0"),
    ({"inputs": {"x1": [1, 2], "x2": [1]}}, "all of one length"),
    ({"dataframe_records": [GOOD_ROW], "params": [1]}, "params must be a JSON object"),
    ([GOOD_ROW], "expected a JSON object"),
])
def test_wrong_shapes_for_invocations(client: FlaskClient, payload: Any, fragment: str) -> None:
    response = client.post("/invocations", json=payload)
    assert response.status_code == 400 and fragment in error(response)["message"], response.json


@pytest.mark.parametrize("csv, fragment", [
    (b"", "empty"),
    (b"x1,x2,count,kind\n1,2,3\n", "has 3 fields"),
    (b"\xff\xfe\x00", "not UTF-8"),
])
def test_malformed_csv(client: FlaskClient, csv: bytes, fragment: str) -> None:
    response = client.post("/invocations", data=csv, content_type="text/csv")
    assert response.status_code == 400 and fragment in error(response)["message"]


def test_csv_values_are_checked_like_json(client: FlaskClient) -> None:
    response = client.post("/invocations", data="x1,x2,count,kind\n0.5,abc,3,p\n0.5,nan,3,z\n",
                           content_type="text/csv")
    assert response.status_code == 422
    problems = {(d["row"], d["field"]) for d in error(response)["details"]}
    assert problems == {(0, "x2"), (1, "x2"), (1, "kind")}


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client: FlaskClient, path: str, content_type: str | None) -> None:
    response = client.post(path, data=json.dumps(GOOD_ROW), content_type=content_type)
    assert response.status_code == 415 and error(response)["code"] == "unsupported_media_type"


def test_too_many_rows_is_413(make_app: Any) -> None:
    response = make_app(max_rows=3).test_client().post("/predict", json=[GOOD_ROW] * 4)
    assert response.status_code == 413
    assert error(response)["code"] == "too_many_rows" and "limit is 3" in error(response)["message"]


def test_body_too_large_is_413(make_app: Any) -> None:
    response = make_app(max_body_bytes=1000).test_client().post("/predict", json=[GOOD_ROW] * 100)
    assert response.status_code == 413 and error(response)["code"] == "request_entity_too_large"


def test_errors_do_not_echo_the_input(client: FlaskClient) -> None:
    secret = "s3cr3t-" + "x" * 500
    response = client.post("/predict", json={**GOOD_ROW, "kind": secret})
    assert response.status_code == 422 and secret not in response.data.decode()


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert error(client.get("/nope"))["code"] == "not_found"
    response = client.get("/predict")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert error(response)["code"] == "method_not_allowed"


def test_no_model_yet_is_503_not_a_crash(make_app: Any, store: Path) -> None:
    (store / store_mod.CURRENT).unlink()
    client = make_app().test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503
    response = client.post("/predict", json=GOOD_ROW)
    assert response.status_code == 503 and error(response)["code"] == "model_not_ready"


# --- auth ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def secured(make_app: Any) -> FlaskClient:
    return make_app(api_key="k3y").test_client()


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"X-API-Key": "wrong"}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"X-API-Key": "k3y"}, 200),
    ({"Authorization": "Bearer k3y"}, 200),
])
def test_api_key_guards_predictions(secured: FlaskClient, headers: dict[str, str], status: int) -> None:
    for path, body in (("/predict", GOOD_ROW), ("/invocations", {"dataframe_records": [GOOD_ROW]})):
        response = secured.post(path, json=body, headers=headers)
        assert response.status_code == status, (path, response.json)
        if status == 401:
            assert error(response)["code"] == "unauthorized" and "WWW-Authenticate" in response.headers


def test_probes_stay_open_with_auth_on(secured: FlaskClient) -> None:
    for path in ("/health", "/ready", "/version", "/openapi.json", "/"):
        assert secured.get(path).status_code == 200, path


def test_auth_off_by_default(client: FlaskClient) -> None:
    assert client.post("/predict", json=GOOD_ROW).status_code == 200
