"""The OpenAPI document is kept true by tests: it matches the app's routes and the served model's contract,
and it is valid OpenAPI 3, all in this process (test_openapi_server.py fuzzes a real gunicorn server with it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from flask import Flask
from openapi_spec_validator import validate
from schemathesis.checks import response_schema_conformance

from tests.support import typed
from tests.support.bundles import FEATURES, GOOD_ROW
from tests.support.pointers import point

API_KEY = "fuzz-key-0123456789"
IMPLICIT_METHODS = {"head", "options"}  # Flask adds these to every rule; they are not part of the API
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}  # a path item's other keys


def _openapi_path(rule: str) -> str:
    """Flask's `/items/<int:id>` is OpenAPI's `/items/{id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _routes(app: Flask) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            routes.setdefault(_openapi_path(rule.rule), set()).update(m.lower() for m in rule.methods or ())
    return {path: methods - IMPLICIT_METHODS for path, methods in routes.items()}


def _spec(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_spec_lists_exactly_the_apps_routes_and_methods(app: Flask) -> None:
    spec_paths = {path: set(ops) & HTTP_METHODS for path, ops in _spec(app)["paths"].items()}
    assert spec_paths == _routes(app)


def test_spec_states_the_size_limits(make_app: Any) -> None:
    """The caps of the served model (4 columns: 20 columns, 10,001 rows of 4 + 1,000 values), as the server applies
    them: a record of more properties than maxProperties is refused."""
    app = make_app(max_rows=100)
    spec = _spec(app)
    assert spec["components"]["schemas"]["Record"]["maxProperties"] == 20
    assert spec["components"]["schemas"]["MlflowRequest"]["properties"]["dataframe_split"]["properties"]["columns"][
        "maxItems"] == 20
    assert "100 rows (SERVING_MAX_ROWS), 20 columns" in spec["info"]["description"]
    assert "1404 values in all (SERVING_MAX_VALUES)" in spec["info"]["description"]
    wide = {**GOOD_ROW, **{f"c{i}": 0 for i in range(17)}}
    assert app.test_client().post("/predict", json=wide).status_code == 413


@pytest.mark.parametrize("version", ["1", "c1"])
def test_record_schema_is_the_served_models_contract(store: Path, make_app: Any, version: str) -> None:
    point(store, version)
    app = make_app()
    contract = app.extensions["serving"].holder.current.contract
    assert list(contract.names) == [f.name for f in FEATURES]  # the contract the bundle was trained with
    record = _spec(app)["components"]["schemas"]["Record"]
    assert list(record["properties"]) == list(contract.names)
    assert set(record["required"]) == {f.name for f in contract.features if not f.nullable}
    for feature in contract.features:
        schema = record["properties"][feature.name]
        if feature.allowed is not None:
            assert schema["enum"] == list(feature.allowed)
        else:
            assert (schema.get("minimum"), schema.get("maximum")) == (feature.min, feature.max)
        assert schema.get("nullable", False) == feature.nullable


@pytest.mark.parametrize("settings_", [{}, {"api_key": API_KEY}], ids=["open", "api-key"])
def test_spec_is_valid_openapi_3(make_app: Any, settings_: dict[str, Any]) -> None:
    spec = _spec(make_app(**settings_))
    validate(spec)  # raises on any violation of the OpenAPI 3.0 schema, including unresolvable $refs
    protected = {p for p, ops in spec["paths"].items() if any(op.get("security") for op in ops.values())}
    # With a key the prediction endpoints say so (and document 401); without one nothing claims auth.
    assert protected == ({"/invocations", "/predict", "/explain"} if settings_ else set())


def test_spec_is_valid_without_a_model(tmp_path: Path) -> None:
    from serving.app import create_app

    app = create_app({"model_store": tmp_path / "empty", "poll_seconds": 0})
    try:
        spec = _spec(app)
        validate(spec)
        assert spec["components"]["schemas"]["Record"] == {"type": "object"}
    finally:
        app.extensions["serving"].holder.stop()


def test_request_examples_in_the_spec_are_accepted(app: Flask) -> None:
    # An example is what a reader pastes first ("Try it out"); one the server refuses misleads them.
    examples = [(path, media_type, content["example"])
                for path, ops in _spec(app)["paths"].items() for op in ops.values()
                for media_type, content in op.get("requestBody", {}).get("content", {}).items() if "example" in content]
    assert examples
    client = app.test_client()
    for path, media_type, example in examples:
        data = example if isinstance(example, str) else json.dumps(example)
        response = client.post(path, data=data, content_type=media_type)
        assert response.status_code == 200, (path, media_type, example, response.get_json())


@pytest.mark.parametrize("outputs", [[2.5], [5.0], [5], ["b"], [True]], ids=repr)
def test_every_kind_of_prediction_conforms(app: Flask, outputs: list[Any]) -> None:
    """Whatever label type a model predicts (floats, whole-number floats, integer classes such as a wine
    `quality` classifier's, strings, booleans), the /predict response matches its documented schema."""
    model = app.extensions["serving"].holder.current
    model.estimator.predict = lambda frame: np.array(outputs * len(frame))  # the label type is what is under test
    model.compiled = None  # scikit-learn serves (the engine's fallback), so that patched predict answers
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)["/predict"]["POST"]
    case = operation.Case(body=GOOD_ROW, media_type="application/json")
    response = case.call()
    assert response.json()["predictions"] == outputs
    case.validate_response(response, checks=[response_schema_conformance])


def test_record_schema_has_every_dtype_and_the_optional_key_and_ignored_columns(make_app: Any,
                                                                                typed_store: Path) -> None:
    app = make_app(model_store=typed_store)
    spec = _spec(app)
    validate(spec)
    record = spec["components"]["schemas"]["Record"]
    properties = record["properties"]
    assert list(properties) == [*typed.FEATURES, "flight_id", "note"]
    assert set(record["required"]) == {"dep_delay", "time_hour", "cut"}  # never the key or the ignored column
    assert properties["cut"]["enum"] == ["Fair", "Good", "Very Good"] and "Fair < Good < Very Good" in \
        properties["cut"]["description"]
    assert properties["carrier"] == {"enum": ["AA", "B6", "DL", "UA"], "nullable": True}
    assert properties["dest"]["anyOf"] == [{"type": "string", "nullable": True}, {"type": "number"}]
    time_hour = properties["time_hour"]
    assert (time_hour["type"], time_hour["format"]) == ("string", "date-time")
    assert "'%Y-%m-%d %H:%M:%S'" in time_hour["description"] and "2013-12-31T23:00:00" in time_hour["description"]
    assert properties["sched"]["type"] == "number" and properties["sched"]["nullable"] is True
    assert "seconds since 1970" in properties["sched"]["description"]
    assert "capture" in properties["flight_id"]["description"] and "ignores" in properties["note"]["description"]
    client = app.test_client()
    for example in (time_hour["example"], properties["sched"]["example"]):  # each dtype's example is accepted
        row = {**app.extensions["serving"].holder.current.contract.example_row()}
        row["time_hour" if isinstance(example, str) else "sched"] = example
        assert client.post("/predict", json=row).status_code == 200
    test_request_examples_in_the_spec_are_accepted(app)


def test_with_out_of_range_flagged_the_ranges_are_words_not_limits(make_app: Any) -> None:
    """SERVING_OUT_OF_RANGE=flag answers a value outside the range (with a warning): the spec must not forbid it."""
    app = make_app(out_of_range="flag")
    x2 = _spec(app)["components"]["schemas"]["Record"]["properties"]["x2"]
    assert "minimum" not in x2 and "maximum" not in x2 and "from -10 to 10" in x2["description"]
    answer = app.test_client().post("/predict", json={**GOOD_ROW, "x2": 50.0})
    assert answer.status_code == 200 and answer.json["warnings"][0]["field"] == "x2"
