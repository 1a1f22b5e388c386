"""The OpenAPI document is kept true by tests: it matches the app's routes and the served model's contract,
it is valid OpenAPI 3, and a schemathesis run against a real gunicorn server finds the server doing what it says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, ignored_auth, negative_data_rejection,
                                 not_a_server_error, positive_data_acceptance, response_schema_conformance,
                                 status_code_conformance)

from serving import store as store_mod
from tests.conftest import free_port
from tests.serving_support import FEATURES, GOOD_ROW, PredictionServer

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


@pytest.mark.parametrize("version", ["1", "c1"])
def test_record_schema_is_the_served_models_contract(store: Path, make_app: Any, version: str) -> None:
    store_mod.write_pointer(store, version)
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
    # With a key the two prediction endpoints say so (and document 401); without one nothing claims auth.
    assert protected == ({"/invocations", "/predict"} if settings_ else set())


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
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)["/predict"]["POST"]
    case = operation.Case(body=GOOD_ROW, media_type="application/json")
    response = case.call()
    assert response.json()["predictions"] == outputs
    case.validate_response(response, checks=[response_schema_conformance])


# --- schemathesis against a real gunicorn server -------------------------------------------------------------

MAX_EXAMPLES = 30  # per operation and generation mode: enough to hit every branch of the validator, cheap on 2 cores
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
          negative_data_rejection]
# Only /predict's request schema says exactly what the server accepts (the contract's Record). /invocations
# documents the MLflow protocol more loosely than JSON Schema can pin down (CSV text; dataframe_split rows as long
# as its columns), so schema-valid bodies there may rightly get a 400.
EXACT_SCHEMAS = {"POST /predict"}
# Invalid input may also be refused as too large (413: more rows than max_rows, which the spec's maxItems says)
# or of the wrong media type (415); both are documented for the prediction endpoints.
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": ["400", "401", "413", "415", "422"]}}})


@pytest.fixture(params=[None, API_KEY], ids=["open", "api-key"])
def api_key(request: pytest.FixtureRequest) -> str | None:
    return request.param


@pytest.fixture
def fuzzed_server(api_key: str | None, request: pytest.FixtureRequest, store: Path,
                  tmp_path: Path) -> Iterator[PredictionServer]:
    """The open run serves the regression model; the API-key run serves the classifier, so the second server
    start also covers the other response shape (string labels and probabilities)."""
    if api_key is None:
        yield request.getfixturevalue("server")
        return
    store_mod.write_pointer(store, "c1")
    with PredictionServer(store, free_port(), tmp_path / "gunicorn-auth.log", SERVING_API_KEY=api_key) as running:
        yield running


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str, api_key: str | None,
          statuses: dict[str, set[int]]) -> None:
    # With a key configured every call carries it, and ignored_auth re-sends a successful call without it and
    # with a wrong one and expects a refusal: a protected endpoint that lets anyone in fails here.
    headers = {"X-API-Key": api_key} if api_key else None
    checks = CHECKS + ([ignored_auth] if api_key else []) + \
        ([positive_data_acceptance] if operation.label in EXACT_SCHEMAS else [])

    # derandomize: the same cases on every run, so a CI failure reproduces locally.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=30)
        statuses.setdefault(operation.label, set()).add(response.status_code)

    run()


@pytest.mark.integration
def test_server_honours_its_spec(api_key: str | None, fuzzed_server: PredictionServer) -> None:
    """Positive and negative cases for every operation in the spec the running server serves.

    schemathesis' pytest integration for fixtures (`schemathesis.pytest.from_fixture`) fails under the pinned
    pytest 9.2 (it writes `Function._nodeid`, which pytest 9 no longer has), so operations are driven through
    `operation.as_strategy()` under hypothesis. Every operation and mode runs even after a failure, so one report
    lists all of them.
    """
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]  # .ok() raises on an unusable operation
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()) and not operation.body:
                continue  # nothing to make invalid: GET /health and friends take no input
            try:
                _fuzz(operation, mode, fuzzed_server.url, api_key, statuses)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:3000]}")
    assert not failures, "\n\n".join(failures) + f"\n\nserver log:\n{fuzzed_server.log()}"
    # The run was not vacuous: every documented operation was called, and both prediction endpoints both
    # predicted (positive cases) and refused with a client error (negative cases).
    assert set(statuses) == {op.label for op in operations} >= {"POST /predict", "POST /invocations", "GET /"}
    for label in ("POST /predict", "POST /invocations"):
        assert 200 in statuses[label] and any(400 <= s < 500 for s in statuses[label]), (label, statuses[label])
