"""POST /explain on a real gunicorn server over HTTP (2 workers, threads): JSON and CSV bodies, the additivity
identity, concurrent first requests (the explainer built once per worker, lazily), the row cap, client errors in the
one error shape, /version, /metrics, no capture; and a server started with SERVING_EXPLAIN=off."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serving.capture import closed_files, read_records
from tests.serving.test_explain_route import INPUTS, bodies, check_identity, rows
from tests.support.bundles import GOOD_ROW
from tests.support.network import free_port, get_json
from tests.support.pointers import point
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration


def call(url: str, body: bytes, content_type: str = "application/json", path: str = "/explain",
         **headers: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(url + path, body, {"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_explain_over_http(store: Path, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", SERVING_EXPLAIN_MAX_ROWS="5",
                          SERVING_CAPTURE_DIR=str(capture)) as server:
        # the first requests of each worker arrive together, while its explainer is being built
        one = json.dumps({"dataframe_records": [GOOD_ROW]}).encode()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: call(server.url, one), range(16)))
        assert {status for status, _, _ in answers} == {200}, answers[0]
        assert all(body == answers[0][2] for _, _, body in answers)  # every worker explains the row alike
        check_identity(answers[0][2], INPUTS)

        records = rows(5)
        for form in ("dataframe_split", "inputs-columnar", "csv"):
            content_type, body = bodies(records)[form]
            status, headers, got = call(server.url, body, content_type, **{"X-Request-ID": f"explain-{form[:5]}"})
            assert status == 200, got
            assert headers["X-Model-Version"] == "1" and got["model"] == {"name": "toy", "version": "1"}
            check_identity(got, INPUTS)
            status, _, served = call(server.url, body, content_type, path="/invocations",
                                     **{"X-Request-ID": "served"})
            assert status == 200 and got["predictions"] == pytest.approx(served["predictions"], rel=1e-5)

        status, _, refused = call(server.url, json.dumps({"dataframe_records": rows(6)}).encode())
        assert status == 413 and "SERVING_EXPLAIN_MAX_ROWS" in refused["error"]["message"]
        for content_type, body in (("application/json", b"{oops"), ("text/csv", b"x1,x2\n1\n"),
                                   ("text/plain", b"hello"),
                                   ("application/json", json.dumps({"inputs": [{**GOOD_ROW, "x2": 99}]}).encode())):
            status, _, refused = call(server.url, body, content_type)
            assert 400 <= status < 500 and set(refused["error"]) == {"code", "message", "details"}, refused

        explain = get_json(f"{server.url}/version")["explain"]
        assert explain["available"] is True and explain["max_rows"] == 5 and explain["output"] == "value"
        metrics = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
        assert re.search(r'^serving_requests_total\{(?=[^}]*endpoint="/explain")(?=[^}]*status="200")', metrics,
                         re.MULTILINE), metrics[:2000]
    # the server has stopped: every capture file is closed. Only /invocations' rows are in them.
    found = [r for path in closed_files(capture) for r in read_records(path)]
    assert found and {r["request_id"] for r in found} == {"served"}
    assert len(found) == 3 * 5


def test_a_classifier_over_http_and_a_server_with_explain_off(store: Path, tmp_path: Path) -> None:
    point(store, "c1")
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", workers=1, SERVING_EXPLAIN="off") as server:
        status, _, refused = call(server.url, json.dumps({"dataframe_records": [GOOD_ROW]}).encode())
        assert status == 404 and refused["error"]["code"] == "explain_disabled", refused
        assert get_json(f"{server.url}/version")["explain"]["available"] is False
        status, _, served = call(server.url, json.dumps({"dataframe_records": [GOOD_ROW]}).encode(),
                                 path="/invocations")
        assert status == 200 and served["predictions"][0] in ("a", "b", "c")
    with PredictionServer(store, free_port(), tmp_path / "gunicorn-on.log", workers=1) as server:
        status, _, got = call(server.url, json.dumps({"dataframe_records": rows(4, "classification")}).encode())
        assert status == 200, got
        check_identity(got, INPUTS)
