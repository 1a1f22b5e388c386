"""Every column type and role through a real gunicorn server and back out of its capture: requests in every form give
the served pipeline's own predictions, capture records each row's key and its datetimes, and the monitor reads them
back, joins delayed labels keyed by the id column and compares the traffic with the training data."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.ml.config_file import MonitoringSources
from include.ml.params_file import MonitoringPolicy, PromotionConfig
from include.monitoring import capture as monitored
from include.monitoring import drift, quality
from serving import engine
from serving.capture import closed_files, read_records
from serving.model import load_bundle
from tests.support import typed
from tests.support.network import free_port, get_json
from tests.support.pointers import point
from tests.support.servers import PredictionServer
from tests.support.signing import trusted_keys

pytestmark = pytest.mark.integration  # a real gunicorn server


def post(url: str, body: str | bytes, content_type: str = "application/json") -> tuple[list[Any], dict[str, str]]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data, {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"], dict(response.headers)


def forms(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, str, str]], list[list[dict[str, Any]]]]:
    """Four requests of a few rows each, one per request form: (path, body, content type), and their rows (a column
    a row lacks is null in the column-wise forms)."""
    parts = [rows[i::4] for i in range(4)]
    names = list(rows[0])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(names)
    writer.writerows([["" if r.get(n) is None else r[n] for n in names] for r in parts[3]])
    return [("/predict", json.dumps(parts[0]), "application/json"),
            ("/invocations", json.dumps({"dataframe_split": {"columns": names,
                                                             "data": [[r.get(n) for n in names] for r in parts[1]]}}),
             "application/json"),
            ("/invocations", json.dumps({"inputs": {n: [r.get(n) for r in parts[2]] for n in names}}),
             "application/json"),
            ("/invocations", out.getvalue(), "text/csv")], parts


def test_every_type_and_role_round_trips_through_server_capture_and_monitor(typed_store: Path,
                                                                            tmp_path: Path) -> None:
    frame = typed.requests("regression", 40, seed=7)
    rows = typed.as_records(frame)
    rows[1] = {**rows[1], "dest": 7, "tailnum": "never seen", "time_hour": "2013-06-01T12:00:00+02:00"}
    rows[4] = {k: v for k, v in rows[4].items() if k not in ("flight_id", "note")}  # both optional (in /predict)
    rows[5] = {**rows[5], "flight_id": None}  # a null key: no key
    served = load_bundle(typed_store / "t1", trusted_keys())  # the very pipeline the server loads
    capture_dir = tmp_path / "capture"
    requests, parts = forms(rows)
    started = datetime.now(timezone.utc)
    with PredictionServer(typed_store, free_port(), tmp_path / "gunicorn.log",
                          SERVING_CAPTURE_DIR=str(capture_dir)) as server:
        version = get_json(f"{server.url}/version")
        assert (version["engine"], version["engine_fallback_reason"]) == ("onnxruntime", None)
        answers = [post(server.url + path, body, kind) for path, body, kind in requests]
    predictions = {}
    for part, (values, headers) in zip(parts, answers):
        assert headers["X-Model-Version"] == "t1" and len(values) == len(part)
        for row, value in zip(part, values):
            predictions[rows.index(row)] = value
    # The served answers are the pipeline's own on the rows as batch scoring reads them (datetimes as text, the
    # id and ignored columns left out), within the ONNX engine's tolerance.
    as_read = pd.DataFrame([{k: row.get(k) for k in typed.FEATURES} for row in rows])
    as_read["dest"] = as_read["dest"].astype(object)
    expected = served.estimator.predict(as_read)
    got = np.array([predictions[i] for i in range(len(rows))])
    np.testing.assert_allclose(got, expected, rtol=engine.REGRESSION_RTOL, atol=engine.REGRESSION_RTOL)

    # Capture: one record per row, its key as sent (CSV sends text), datetimes as ISO text in UTC.
    records = [r for path in closed_files(capture_dir) for r in read_records(path)]
    assert len(records) == len(rows)
    by_key = {r["key"]["flight_id"]: r for r in records if "key" in r}
    assert len(by_key) == len(rows) - 2 and sum("key" not in r for r in records) == 2
    assert {type(k) for k in by_key} == {int, str} and "1003" in by_key  # row 3 went in the CSV request
    first = by_key[rows[0]["flight_id"]]
    assert first["inputs"]["time_hour"] == rows[0]["time_hour"].replace(" ", "T")
    assert by_key[rows[1]["flight_id"]]["inputs"]["time_hour"] == "2013-06-01T10:00:00"
    assert "note" not in first["inputs"] and "flight_id" not in first["inputs"]
    assert by_key[rows[1]["flight_id"]]["inputs"]["dest"] == 7  # an open category as sent

    # The monitor reads it back: the key as text, datetimes as datetimes, the categories as text.
    sources = MonitoringSources(capture_dir=str(capture_dir))
    schema = typed.schema("regression")
    window = (started - timedelta(minutes=5), datetime.now(timezone.utc) + timedelta(minutes=5))
    captured = monitored.collect(sources, schema, "flights", "t1", *window).frame
    assert len(captured) == len(rows) and captured["flight_id"].isna().sum() == 2
    assert set(captured["flight_id"].dropna()) == {str(r["flight_id"]) for r in rows if r.get("flight_id")}
    assert captured["time_hour"].dtype == np.dtype("datetime64[ns]")
    assert captured["dest"].dropna().map(type).eq(str).all() and "7" in set(captured["dest"])  # 7 read as "7"

    # Delayed labels keyed by the id column join on the captured key.
    truth = pd.DataFrame({"flight_id": [r["flight_id"] for r in rows if r.get("flight_id")]})
    truth["arr_delay"] = np.arange(len(truth), dtype=float)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    labels = quality.read_ground_truth(str(tmp_path / "truth.csv"), schema)
    live = quality.live_quality(captured, labels, schema, PromotionConfig(metric="rmse"), {"rmse": 1.0},
                                min_rows=10, drop=0.1)
    joined = captured.dropna(subset=["flight_id"]).merge(labels, on="flight_id")
    assert live.rows == len(rows) - 2
    assert live.live == pytest.approx(float(np.sqrt(np.mean((joined["prediction"] - joined["arr_delay"]) ** 2))))

    # Drift: the datetime is reported, not judged; the rest is compared as its dtype says.
    reference = typed.frame("regression")
    report = drift.compare(reference, captured, drift.kinds_from_schema(schema.features),
                           MonitoringPolicy(min_rows=10), {c.name: c for c in schema.features})
    assert report.features["time_hour"].status == drift.NOT_TESTED
    assert report.features["cut"].kind == "categorical" and report.features["cut"].status != drift.NOT_ENOUGH_DATA


def test_a_classifier_on_every_type_answers_as_its_pipeline(typed_store: Path, tmp_path: Path) -> None:
    point(typed_store, "tc1")
    served = load_bundle(typed_store / "tc1", trusted_keys())
    rows = typed.as_records(typed.requests("classification", 12, seed=8))
    with PredictionServer(typed_store, free_port(), tmp_path / "gunicorn.log") as server:
        assert get_json(f"{server.url}/version")["engine"] == "onnxruntime"
        request = urllib.request.Request(f"{server.url}/predict", json.dumps(rows).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    frame = pd.DataFrame([{k: row[k] for k in typed.FEATURES} for row in rows])
    assert answer["predictions"] == served.estimator.predict(frame).tolist()
    np.testing.assert_allclose([[p[c] for c in served.estimator.classes_] for p in answer["probabilities"]],
                               served.estimator.predict_proba(frame), atol=engine.PROBABILITY_ATOL)
