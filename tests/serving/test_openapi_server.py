"""A schemathesis run against a real gunicorn server finds the server doing what its OpenAPI document says
(the document itself is checked in this process by test_openapi.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.network import free_port
from tests.support.pointers import point
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration

API_KEY = "fuzz-key-0123456789"
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


@pytest.fixture(params=["open", "api-key", "typed"])
def run(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def api_key(run: str) -> str | None:
    return API_KEY if run == "api-key" else None


@pytest.fixture
def fuzzed_server(run: str, api_key: str | None, request: pytest.FixtureRequest, store: Path,
                  tmp_path: Path) -> Iterator[PredictionServer]:
    """The open run serves the regression model; the API-key run serves the classifier, so the second server
    start also covers the other response shape (string labels and probabilities); the typed run a model with every
    column type and role (datetimes, an ordinal, open and closed categories, an id and an ignored column), flagging
    values outside the schema's range rather than refusing them (the spec then states the ranges in words), so that
    random date-times, rarely in the model's year, are answered too."""
    if run == "open":
        yield request.getfixturevalue("server")
        return
    if run == "typed":
        with PredictionServer(request.getfixturevalue("typed_store"), free_port(), tmp_path / "gunicorn-typed.log",
                              SERVING_OUT_OF_RANGE="flag") as running:
            yield running
        return
    point(store, "c1")
    with PredictionServer(store, free_port(), tmp_path / "gunicorn-auth.log", SERVING_API_KEY=api_key) as running:
        yield running


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str, api_key: str | None,
          statuses: dict[str, set[int]], exact: set[str]) -> None:
    # With a key configured every call carries it, and ignored_auth re-sends a successful call without it and
    # with a wrong one and expects a refusal: a protected endpoint that lets anyone in fails here.
    headers = {"X-API-Key": api_key} if api_key else None
    checks = CHECKS + ([ignored_auth] if api_key else []) + \
        ([positive_data_acceptance] if operation.label in exact else [])

    # derandomize: the same cases on every run, so a CI failure reproduces locally.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=30)
        statuses.setdefault(operation.label, set()).add(response.status_code)

    run()


def test_server_honours_its_spec(run: str, api_key: str | None, fuzzed_server: PredictionServer) -> None:
    """Positive and negative cases for every operation in the spec the running server serves.

    schemathesis' pytest integration for fixtures (`schemathesis.pytest.from_fixture`) fails under the pinned
    pytest 9.2 (it writes `Function._nodeid`, which pytest 9 no longer has), so operations are driven through
    `operation.as_strategy()` under hypothesis. Every operation and mode runs even after a failure, so one report
    lists all of them. With the typed model no request schema is exact (a date-time JSON Schema accepts, such as a
    leap second or the year 9999, can still be one the model cannot take); every other check still runs.
    """
    exact = set() if run == "typed" else EXACT_SCHEMAS
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]  # .ok() raises on an unusable operation
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()) and not operation.body:
                continue  # nothing to make invalid: GET /health and friends take no input
            try:
                _fuzz(operation, mode, fuzzed_server.url, api_key, statuses, exact)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:3000]}")
    assert not failures, "\n\n".join(failures) + f"\n\nserver log:\n{fuzzed_server.log()}"
    # The run was not vacuous: every documented operation was called, and the prediction endpoints (and /explain)
    # both answered (positive cases) and refused with a client error (negative cases).
    assert set(statuses) == {op.label for op in operations} >= {"POST /predict", "POST /invocations", "GET /"}
    for label in ("POST /predict", "POST /invocations", "POST /explain"):
        assert 200 in statuses[label] and any(400 <= s < 500 for s in statuses[label]), (label, statuses[label])
