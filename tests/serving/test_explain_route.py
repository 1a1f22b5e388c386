"""POST /explain in this process (the app and its test client, real bundles): every body form /invocations takes,
the additivity identity, the row cap, refusals in the one error shape, SERVING_EXPLAIN=off, an unexplainable model,
/version's `explain`, the explainer built once per bundle, and no capture. test_explain_server.py runs gunicorn;
test_explain.py checks serving/explain.py itself."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from serving import explain as explain_mod
from serving.app import shutdown
from serving.capture import closed_files, read_records
from serving.settings import Settings, SettingsError
from tests.support import typed
from tests.support.bundles import FEATURES, GOOD_ROW, make_bundle, toy_frame
from tests.support.pointers import point

INPUTS = [f.name for f in FEATURES]


def rows(n: int, task: str = "regression", seed: int = 1) -> list[dict[str, Any]]:
    """`n` valid rows of the toy table (x1 has missing values: sent as null)."""
    frame = toy_frame(task, rows=n, seed=seed).drop(columns="y")
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in json.loads(frame.to_json(orient="records"))]


def bodies(records: list[dict[str, Any]]) -> dict[str, tuple[str, bytes]]:
    """The same rows in every body form /invocations takes: (content type, body)."""
    columns = list(records[0])
    columnar = {c: [r[c] for r in records] for c in columns}
    out = io.StringIO()
    pd.DataFrame(records, columns=columns).to_csv(out, index=False)
    as_json = {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]},
               "dataframe_records": records, "instances": records, "inputs": records,
               "inputs-columnar": columnar, "instances-columnar": columnar}
    forms = {name: ("application/json", json.dumps({name.split("-")[0]: value}).encode())
             for name, value in as_json.items()}
    return forms | {"csv": ("text/csv", out.getvalue().encode())}


def post(client: Any, body: Any, content_type: str = "application/json", **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/explain", data=data, content_type=content_type, headers=headers)


def check_identity(answer: dict[str, Any], inputs: list[str]) -> None:
    """base value + contributions == what the model put out, per row (and class), within 1e-6 relative; every
    contribution keyed by an input column, every input column present."""
    assert len(answer["explanations"]) == len(answer["predictions"])
    for i, (row, prediction) in enumerate(zip(answer["explanations"], answer["predictions"])):
        if answer["output"] == "value":
            assert answer["classes"] == []
            assert set(row["contributions"]) == set(inputs), row
            total = row["base_value"] + sum(row["contributions"].values())
            assert total == pytest.approx(prediction, rel=1e-6, abs=1e-9), (i, row, prediction)
            continue
        probabilities = answer["probabilities"][i]
        assert set(row["contributions"]) == set(answer["classes"]) == set(row["base_value"])
        sums = {c: row["base_value"][c] + sum(row["contributions"][c].values()) for c in answer["classes"]}
        for contributions in row["contributions"].values():
            assert set(contributions) == set(inputs)
        if answer["output"] == "probability":
            expected = {c: probabilities[c] for c in sums}
        elif len(sums) == 1:  # binary log-odds: the positive class
            (c, _), = sums.items()
            expected = {c: float(np.log(probabilities[c] / (1 - probabilities[c])))}
        else:  # multiclass raw scores: their softmax is the probabilities
            scores = np.array([sums[c] for c in answer["classes"]])
            soft = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            sums, expected = dict(zip(answer["classes"], soft)), {c: probabilities[c] for c in answer["classes"]}
        for c in sums:
            assert sums[c] == pytest.approx(expected[c], rel=1e-6, abs=1e-9), (i, c, row)
        assert max(probabilities, key=probabilities.get) == str(prediction)


@pytest.mark.parametrize("form", list(bodies(rows(2))))
def test_every_invocations_body_form_is_explained(client: Any, form: str) -> None:
    records = rows(5)
    content_type, body = bodies(records)[form]
    answer = post(client, body, content_type)
    assert answer.status_code == 200, answer.get_json()
    got = answer.get_json()
    assert got["model"] == {"name": "toy", "version": "1"}
    assert answer.headers["X-Model-Version"] == "1"
    assert (got["output"], got["calibrated"], got["classes"]) == ("value", False, [])
    assert got["method"] in ("tree_shap", "linear")
    check_identity(got, INPUTS)
    # the same predictions /invocations answers (the ONNX engine's, equal within its checked tolerance)
    served = client.post("/invocations", data=body, content_type=content_type).get_json()["predictions"]
    assert got["predictions"] == pytest.approx(served, rel=1e-5)


def test_a_classifier_is_explained_per_class_in_its_output_space(store: Path, make_app: Callable[..., Flask]) -> None:
    point(store, "c1")
    client = make_app().test_client()
    answer = post(client, {"dataframe_records": rows(6, "classification")})
    assert answer.status_code == 200, answer.get_json()
    got = answer.get_json()
    assert (got["output"], got["calibrated"], got["classes"]) == ("probability", False, ["a", "b", "c"])
    check_identity(got, INPUTS)
    assert client.get("/version").get_json()["explain"]["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize(("task", "version"), [("regression", "t1"), ("classification", "tc1"),
                                               ("classification", "tb1")])
def test_typed_columns_come_back_under_the_input_columns_name(typed_store: Path, make_app: Callable[..., Flask],
                                                              task: str, version: str) -> None:
    """One-hot categories, encoded ones and datetime-derived columns are summed back to the column sent; the id
    and ignored columns are no input and get no contribution. t1: boosting (regression), tc1: a forest (a
    probability per class), tb1: boosting (log-odds per class)."""
    if version == "tb1":
        typed.make_typed_bundle(typed_store, "tb1", task="classification", name="flights-late")
    point(typed_store, version)
    client = make_app(model_store=typed_store, out_of_range="flag").test_client()
    planned = client.get("/version").get_json()["explain"]
    records = typed.as_records(typed.requests(task, 8, seed=3))
    answer = post(client, {"dataframe_records": records})
    assert answer.status_code == 200, answer.get_json()
    got = answer.get_json()
    check_identity(got, list(typed.FEATURES))
    if version == "tb1":
        assert got["output"] == "log_odds" and got["classes"] == ["early", "late", "on time"]
    assert planned == {**client.get("/version").get_json()["explain"], "built": False}


def test_the_row_cap_is_its_own_and_named(make_app: Callable[..., Flask]) -> None:
    client = make_app(explain_max_rows=3, max_rows=50).test_client()
    assert post(client, {"dataframe_records": rows(3)}).status_code == 200
    for content_type, body in bodies(rows(4)).values():
        refused = post(client, body, content_type)
        assert refused.status_code == 413, refused.get_json()
        error = refused.get_json()["error"]
        assert error["code"] == "too_many_rows" and "SERVING_EXPLAIN_MAX_ROWS" in error["message"]
        assert "at most 3 rows" in error["message"]
    # past SERVING_MAX_ROWS too (refused while parsing, before validation): still /explain's cap that is named
    refused = post(client, bodies(rows(60))["csv"][1], "text/csv")
    assert refused.status_code == 413 and "SERVING_EXPLAIN_MAX_ROWS" in refused.get_json()["error"]["message"]
    # /invocations keeps SERVING_MAX_ROWS
    assert client.post("/invocations", json={"dataframe_records": rows(4)}).status_code == 200


def test_the_row_cap_is_never_above_serving_max_rows(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_rows=2).test_client()  # SERVING_EXPLAIN_MAX_ROWS stays 100
    assert post(client, {"dataframe_records": rows(2)}).status_code == 200
    refused = post(client, {"dataframe_records": rows(3)})
    assert refused.status_code == 413 and "at most 2 rows" in refused.get_json()["error"]["message"]
    assert client.get("/version").get_json()["explain"]["max_rows"] == 2


BAD = {
    "not json": ("application/json", b"{not json"),
    "empty": ("application/json", b""),
    "a bare list": ("application/json", json.dumps([GOOD_ROW]).encode()),
    "unknown form": ("application/json", json.dumps({"records": [GOOD_ROW]}).encode()),
    "no rows": ("application/json", json.dumps({"dataframe_records": []}).encode()),
    "missing column": ("application/json", json.dumps({"dataframe_records": [
        {k: v for k, v in GOOD_ROW.items() if k != "x2"}]}).encode()),
    "unknown column": ("application/json", json.dumps({"dataframe_records": [{**GOOD_ROW, "zz": 1}]}).encode()),
    "out of range": ("application/json", json.dumps({"dataframe_records": [{**GOOD_ROW, "x2": 50}]}).encode()),
    "wrong type": ("application/json", json.dumps({"dataframe_records": [{**GOOD_ROW, "x2": "high"}]}).encode()),
    "unknown category": ("application/json", json.dumps({"dataframe_records": [{**GOOD_ROW, "kind": "z"}]}).encode()),
    "ragged split": ("application/json", json.dumps({"dataframe_split": {"columns": INPUTS,
                                                                          "data": [[1.0]]}}).encode()),
    "csv ragged": ("text/csv", b"x1,x2,count,kind\n1,2\n"),
    "csv text in a number": ("text/csv", b"x1,x2,count,kind\n1,abc,3,p\n"),
    "form post": ("application/x-www-form-urlencoded", b"x1=1"),
    "no content type": ("", json.dumps({"dataframe_records": [GOOD_ROW]}).encode()),
    "deep nesting": ("application/json", b'{"inputs":' + b"[" * 5000 + b"]" * 5000 + b"}"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_body_is_a_client_error_in_the_one_error_shape(client: Any, case: str) -> None:
    content_type, body = BAD[case]
    answer = client.post("/explain", data=body, content_type=content_type or None)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.get_data(as_text=True)[:300])
    error = answer.get_json()["error"]
    assert set(error) == {"code", "message", "details"} and error["message"], error
    assert "X-Model-Version" not in answer.headers  # nothing was explained


def test_serving_explain_off_answers_404_and_builds_nothing(make_app: Callable[..., Flask],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env({"SERVING_EXPLAIN": "off"}).explain is False
    built: list[Any] = []
    monkeypatch.setattr(explain_mod, "build_explainer", lambda *a: built.append(a))
    app = make_app(explain=False)
    client = app.test_client()
    answer = post(client, {"dataframe_records": [GOOD_ROW]})
    assert answer.status_code == 404
    error = answer.get_json()["error"]
    assert error["code"] == "explain_disabled" and "SERVING_EXPLAIN=off" in error["message"]
    assert post(client, b"{not json").status_code == 404  # off before the body is read
    assert client.get("/version").get_json()["explain"] == {
        "available": False, "reason": "explanations are turned off on this server (SERVING_EXPLAIN=off)"}
    assert client.post("/invocations", json={"dataframe_records": [GOOD_ROW]}).status_code == 200
    assert built == [] and app.extensions["serving"].holder.current._explainer is None


def test_settings_refuse_a_row_cap_below_one() -> None:
    with pytest.raises(SettingsError, match="SERVING_EXPLAIN_MAX_ROWS"):
        Settings.from_env({"SERVING_EXPLAIN_MAX_ROWS": "0"})
    with pytest.raises(SettingsError, match="SERVING_EXPLAIN"):
        Settings.from_env({"SERVING_EXPLAIN": "maybe"})
    assert Settings.from_env({"SERVING_EXPLAIN_MAX_ROWS": "7"}).explain_max_rows == 7


def test_a_model_that_cannot_be_explained_says_why_once(make_app: Callable[..., Flask],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def unexplainable(estimator: Any, contract: Any) -> Any:
        calls.append(1)
        raise explain_mod.ExplainError("no explainer for the family 'mystery'")

    monkeypatch.setattr(explain_mod, "build_explainer", unexplainable)
    client = make_app().test_client()
    for _ in range(2):
        answer = post(client, {"dataframe_records": [GOOD_ROW]})
        assert answer.status_code == 404, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "explain_unavailable" and "mystery" in error["message"]
    version = client.get("/version").get_json()["explain"]  # once tried, /version tells why
    assert version == {"available": False, "reason": "toy version 1 cannot be explained: no explainer for the "
                                                     "family 'mystery'"}
    assert calls == [1]  # tried once per bundle, not on every request


def test_version_says_why_a_model_of_an_unknown_kind_cannot_be_explained(app: Flask) -> None:
    """Not a family explain.py knows: /version tries (no tree is copied for it) and says why at once."""
    from sklearn.dummy import DummyRegressor
    from sklearn.pipeline import Pipeline

    model = app.extensions["serving"].holder.current
    model.estimator = Pipeline([("preprocess", model.estimator.named_steps["preprocess"]),
                                ("model", DummyRegressor().fit([[0.0]], [1.0]))])
    version = app.test_client().get("/version").get_json()["explain"]
    assert version["available"] is False and "DummyRegressor" in version["reason"], version
    answer = post(app.test_client(), {"dataframe_records": [GOOD_ROW]})
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "explain_unavailable"


def test_an_explainer_that_fails_to_build_is_unavailable_not_a_500(make_app: Callable[..., Flask],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(estimator: Any, contract: Any) -> Any:
        raise ValueError("/opt/secret/path/tree.bin is not a tree")

    monkeypatch.setattr(explain_mod, "build_explainer", broken)
    client = make_app().test_client()
    answer = post(client, {"dataframe_records": [GOOD_ROW]})
    assert answer.status_code == 404
    message = answer.get_json()["error"]["message"]
    assert "ValueError" in message and "/opt/secret" not in message  # no path of the host in a public answer


def test_version_says_explanations_are_available_and_how_without_building(app: Flask) -> None:
    client = app.test_client()
    before = client.get("/version").get_json()["explain"]
    assert before == {"available": True, "method": "tree_shap", "output": "value", "calibrated": False,
                      "classes": [], "built": False, "max_rows": 100}
    assert app.extensions["serving"].holder.current._explainer is None  # /version builds nothing
    assert post(client, {"dataframe_records": [GOOD_ROW]}).status_code == 200
    assert client.get("/version").get_json()["explain"] == {**before, "built": True}


def test_the_explainer_is_built_lazily_once_per_bundle_under_concurrency(app: Flask,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = explain_mod.build_explainer, []

    def slow(estimator: Any, contract: Any) -> Any:
        calls.append(1)
        time.sleep(0.2)  # long enough for every thread below to arrive while it builds
        return real(estimator, contract)

    monkeypatch.setattr(explain_mod, "build_explainer", slow)
    model = app.extensions["serving"].holder.current
    assert model._explainer is None  # not built at load: /invocations never pays for it
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(model.explainer())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1] and len(got) == 8 and all(e is got[0] for e in got)
    assert post(app.test_client(), {"dataframe_records": [GOOD_ROW]}).status_code == 200
    assert calls == [1] and model.explainer() is got[0]


def test_explanations_are_not_captured(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(capture_dir=tmp_path / "capture")
    client = app.test_client()
    explained = post(client, {"dataframe_records": rows(3)}, **{"X-Request-ID": "explained"})
    predicted = client.post("/invocations", json={"dataframe_records": rows(2)}, headers={"X-Request-ID": "served"})
    assert explained.status_code == predicted.status_code == 200
    shutdown(app)
    found = [r for path in closed_files(tmp_path / "capture") for r in read_records(path)]
    assert [r["request_id"] for r in found] == ["served", "served"]  # capture works; the explained rows are not in


def test_the_api_key_guards_explain(make_app: Callable[..., Flask]) -> None:
    client = make_app(api_key="k" * 20).test_client()
    assert post(client, {"dataframe_records": [GOOD_ROW]}).status_code == 401
    assert post(client, {"dataframe_records": [GOOD_ROW]}, **{"X-API-Key": "k" * 20}).status_code == 200


def test_the_form_page_knows_whether_to_ask_for_an_explanation(make_app: Callable[..., Flask]) -> None:
    assert 'data-explain="on"' in make_app().test_client().get("/").get_data(as_text=True)
    assert 'data-explain="off"' in make_app(explain=False).test_client().get("/").get_data(as_text=True)


@pytest.mark.parametrize("version", ["1", "c1"])
def test_the_answer_matches_its_openapi_schema(store: Path, make_app: Callable[..., Flask], version: str) -> None:
    import schemathesis
    from schemathesis.checks import response_schema_conformance

    point(store, version)
    app = make_app()
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)["/explain"]["POST"]
    task = "regression" if version == "1" else "classification"
    case = operation.Case(body={"dataframe_records": rows(3, task)}, media_type="application/json")
    response = case.call()
    assert response.status_code == 200, response.text
    case.validate_response(response, checks=[response_schema_conformance])
    refused = operation.Case(body={"dataframe_records": rows(101, task)}, media_type="application/json").call()
    assert refused.status_code == 413


def test_concurrent_requests_get_the_explanations_one_at_a_time_would(typed_store: Path,
                                                                     make_app: Callable[..., Flask]) -> None:
    """A worker's threads share one explainer: rows explained at once (the typed model: histogram gradient boosting
    with categorical columns) get what each gets alone."""
    client = make_app(model_store=typed_store, out_of_range="flag").test_client()
    records = typed.as_records(typed.requests("regression", 12, seed=5))
    alone = [post(client, {"dataframe_records": [r]}).get_json()["explanations"] for r in records]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda r: post(client, {"dataframe_records": [r]}).get_json()["explanations"],
                                 records * 3))
    assert together == alone * 3


@pytest.mark.parametrize(("family", "task", "hyperparameters"), [
    ("hist_gradient_boosting", "classification", {"max_iter": 15}),
    ("hist_gradient_boosting", "regression", {"max_iter": 15}),
    ("elasticnet", "regression", {"alpha": 0.01}),
    ("elasticnet", "classification", {"C": 1.0}),
])
def test_every_family_is_explained_through_the_route(store: Path, make_app: Callable[..., Flask], family: str,
                                                      task: str, hyperparameters: dict[str, Any]) -> None:
    """Boosting (log-odds per class for a classifier) and the linear family, as the server loads them."""
    make_bundle(store, "f1", task=task, family=family, hyperparameters=hyperparameters)
    point(store, "f1")
    client = make_app().test_client()
    planned = client.get("/version").get_json()["explain"]
    answer = post(client, {"dataframe_split": {"columns": INPUTS, "data": [list(r.values()) for r in rows(7, task)]}})
    assert answer.status_code == 200, answer.get_json()
    got = answer.get_json()
    assert got["method"] == ("linear" if family == "elasticnet" else "tree_shap")
    assert got["output"] == ("value" if task == "regression" else "log_odds")
    check_identity(got, INPUTS)
    # what /version said before the explainer was built is what the built one says
    assert planned == {**client.get("/version").get_json()["explain"], "built": False}
