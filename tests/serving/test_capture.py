"""Prediction capture without a server: the writer on temp dirs (files, rotation, drops, the disk fill level,
sampling) and the request id and capture hooks through Flask's test client."""

from __future__ import annotations

import gzip
import logging
import math
import os
import stat
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from flask import Flask

from serving.app import shutdown
from serving.capture import PART, CaptureCounters, CaptureWriter, closed_files, disk_fill, read_records, request_id
from serving.settings import Settings, SettingsError
from tests.support.bundles import GOOD_ROW
from tests.support.network import wait_until
from tests.support.pointers import point

CONTRACT_KEYS = {"request_id", "row", "timestamp", "model_name", "model_version", "inputs", "prediction",
                 "probabilities", "served_by"}


class Recorded:
    """CaptureCounters that remember what the writer reported."""

    def __init__(self) -> None:
        self.captured, self.dropped, self.enabled = 0, Counter(), []

    def counters(self) -> CaptureCounters:
        def captured(rows: int) -> None:
            self.captured += rows

        def dropped(reason: str, rows: int) -> None:
            self.dropped[reason] += rows

        return CaptureCounters(captured, dropped, self.enabled.append)


def submit(writer: CaptureWriter, rid: str, rows: int = 1, model: str = "toy", version: str = "1") -> bool:
    columns = {"x1": np.arange(rows, dtype=np.float64), "kind": np.array(["p"] * rows, dtype=object)}
    return writer.submit(rid, model, version, columns, rows, [float(i) * 10 for i in range(rows)], None)


def records(directory: Path) -> list[dict[str, Any]]:
    return [r for path in closed_files(directory) for r in read_records(path)]


def make_writer(tmp_path: Path, recorded: Recorded | None = None, **options: Any) -> CaptureWriter:
    return CaptureWriter(tmp_path / "capture", counters=(recorded or Recorded()).counters(), **options)


# --- request ids --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["abc", "req-1.2_3:4", "A" * 128])
def test_a_safe_client_request_id_is_kept(given: str) -> None:
    assert request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "A" * 129, "a b", "x\r\nSet-Cookie: y", "<script>", "é", "a/b"])
def test_an_unsafe_or_missing_request_id_is_replaced_by_a_uuid(given: str | None) -> None:
    made = request_id(given)
    assert made != given and uuid.UUID(hex=made).version == 4 and len(made) == 32


# --- the writer ----------------------------------------------------------------------------------------------------

def test_one_line_per_row_in_gzip_json_lines_renamed_from_part_on_close(tmp_path: Path) -> None:
    recorded = Recorded()
    writer = make_writer(tmp_path, recorded)
    columns = {"x1": np.array([0.5, math.nan]), "count": np.array([3.0, 40.0]),
               "kind": np.array(["p", None], dtype=object)}
    assert writer.submit("r1", "toy model/x", "7", columns, 2, ["a", "b"], [{"a": 0.75, "b": 0.25},
                                                                            {"a": 0.1, "b": 0.9}])
    wait_until(lambda: recorded.captured == 2)
    assert list((tmp_path / "capture").rglob(f"*{PART}")), "an open file is written under its .part name"
    assert not list(closed_files(tmp_path / "capture"))
    writer.close()
    files = list(closed_files(tmp_path / "capture"))
    assert len(files) == 1 and not list((tmp_path / "capture").rglob(f"*{PART}"))
    model_dir, date_dir = files[0].parent.parent.name, files[0].parent.name
    assert model_dir == "toy_model_x"  # one safe path component
    lines = gzip.decompress(files[0].read_bytes()).decode().splitlines()
    assert len(lines) == 2
    first, second = read_records(files[0])
    assert set(first) == CONTRACT_KEYS and first["served_by"] == "champion"
    assert first["timestamp"].endswith("Z") and first["timestamp"][:10] == date_dir
    assert (first["request_id"], first["row"], second["row"]) == ("r1", 0, 1)
    assert (first["model_name"], first["model_version"]) == ("toy model/x", "7")
    assert first["inputs"] == {"x1": 0.5, "count": 3.0, "kind": "p"}
    assert second["inputs"] == {"x1": None, "count": 40.0, "kind": None}  # missing values as null
    assert (first["prediction"], second["probabilities"]) == ("a", {"a": 0.1, "b": 0.9})
    assert recorded.dropped == Counter() and recorded.enabled == [True]


def test_keys_are_recorded_per_row_and_datetimes_as_iso_text(tmp_path: Path) -> None:
    writer = make_writer(tmp_path)
    columns = {"t": np.array(["2013-05-01T10:00:00", "NaT", "2013-05-01T10:00:00.250"], dtype="datetime64[ns]"),
               "cut": np.array(["Good", "Fair", None], dtype=object)}
    assert writer.submit("r1", "flights", "1", columns, 3, [1.0, 2.0, 3.0], None,
                         {"flight_id": [17, None, "A-3"], "leg": [1, 2, None]})
    assert writer.submit("r2", "flights", "1", {"t": columns["t"][:1], "cut": columns["cut"][:1]}, 1, [4.0], None)
    writer.close()
    rows = {(r["request_id"], r["row"]): r for r in records(tmp_path / "capture")}
    assert [rows[("r1", i)]["key"] for i in range(3)] == [{"flight_id": 17, "leg": 1}, {"leg": 2},
                                                          {"flight_id": "A-3"}]
    assert "key" not in rows[("r2", 0)]  # the request sent no key
    assert [rows[("r1", i)]["inputs"]["t"] for i in range(3)] == [
        "2013-05-01T10:00:00.000000", None, "2013-05-01T10:00:00.250000"]  # a fraction: every row to the microsecond
    assert rows[("r2", 0)]["inputs"] == {"t": "2013-05-01T10:00:00", "cut": "Good"}
    assert list(rows[("r1", 0)]) == ["request_id", "row", "timestamp", "model_name", "model_version", "key",
                                     "inputs", "prediction", "probabilities", "served_by"]


def test_the_app_captures_keys_and_datetimes_of_a_typed_model(make_app: Callable[..., Flask], typed_store: Path,
                                                              tmp_path: Path) -> None:
    app = make_app(model_store=typed_store, capture_dir=tmp_path / "capture")
    client = app.test_client()
    row = {"flight_id": 1001, "dep_delay": 12.5, "time_hour": "2013-05-01T12:00:00+02:00", "sched": 1367400000,
           "cut": "Good", "carrier": "UA", "dest": "D07", "tailnum": None, "note": "late crew"}
    answered = client.post("/predict", json=[row, {k: v for k, v in row.items() if k != "flight_id"}])
    csv_answer = client.post("/invocations", content_type="text/csv", headers={"X-Request-ID": "csv"},
                             data="flight_id,dep_delay,time_hour,sched,cut,carrier,dest,tailnum,note\n"
                                  "1001,12.5,2013-05-01 10:00:00,1367400000,Good,UA,D07,,late crew\n")
    assert answered.status_code == csv_answer.status_code == 200, (answered.json, csv_answer.json)
    assert csv_answer.json["predictions"] == answered.json["predictions"][:1]
    shutdown(app)
    found = sorted(records(tmp_path / "capture"), key=lambda r: (r["request_id"] == "csv", r["row"]))
    assert [r.get("key") for r in found] == [{"flight_id": 1001}, None, {"flight_id": "1001"}]  # CSV sends text
    assert found[0]["inputs"] == {"dep_delay": 12.5, "time_hour": "2013-05-01T10:00:00",
                                  "sched": "2013-05-01T09:20:00", "cut": "Good", "carrier": "UA", "dest": "D07",
                                  "tailnum": None}  # no id, no ignored column; datetimes in UTC
    assert found[2]["inputs"] == found[0]["inputs"]


def test_files_rotate_by_size_and_every_row_is_in_exactly_one(tmp_path: Path) -> None:
    writer = make_writer(tmp_path, rotate_bytes=2_000)
    for i in range(60):
        submit(writer, f"r{i}", rows=2)
    writer.close()
    files = list(closed_files(tmp_path / "capture"))
    assert len(files) >= 5
    found = Counter((r["request_id"], r["row"]) for r in records(tmp_path / "capture"))
    assert found == Counter({(f"r{i}", row): 1 for i in range(60) for row in (0, 1)})
    assert len({f.name for f in files}) == len(files)


def test_files_rotate_by_age_without_a_close(tmp_path: Path) -> None:
    writer = make_writer(tmp_path, rotate_seconds=0.2)
    submit(writer, "old")
    wait_until(lambda: len(list(closed_files(tmp_path / "capture"))) == 1, timeout=10)
    submit(writer, "new")
    writer.close()
    assert [r["request_id"] for r in records(tmp_path / "capture")] == ["old", "new"]


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    """The writer is held in its disk check; rows beyond queue_rows waiting are dropped at once."""
    entered, release = threading.Event(), threading.Event()
    calls = Counter()

    def held_fill(path: Path) -> float:
        calls["n"] += 1
        if calls["n"] > 1:  # the first check is the constructor's
            entered.set()
            release.wait(10)
        return 0.0

    recorded = Recorded()
    writer = make_writer(tmp_path, recorded, queue_rows=5, fill=held_fill, check_seconds=0)
    assert submit(writer, "a", rows=3)
    assert entered.wait(10)  # "a" written, the writer now held
    assert submit(writer, "b", rows=3)
    assert not submit(writer, "c", rows=3)  # 3 waiting + 3 > 5
    assert not submit(writer, "huge", rows=6)
    release.set()
    writer.close()
    assert recorded.dropped == Counter({"queue_full": 9})
    assert recorded.captured == 6
    assert sorted({r["request_id"] for r in records(tmp_path / "capture")}) == ["a", "b"]


def test_disk_fill_stops_capture_with_one_log_line_and_resumes(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    level = {"fill": 0.1}
    recorded = Recorded()
    caplog.set_level(logging.WARNING, logger="serving.capture")
    writer = make_writer(tmp_path, recorded, max_fill=0.5, fill=lambda path: level["fill"], check_seconds=0.05)
    submit(writer, "before")
    wait_until(lambda: recorded.captured == 1)
    level["fill"] = 0.9
    wait_until(lambda: not writer.enabled)
    assert (tmp_path / "capture" / "toy").exists() and not list((tmp_path / "capture").rglob(f"*{PART}")), \
        "the open file is closed when capture stops"
    for i in range(5):
        assert not submit(writer, f"full{i}")
    wait_until(lambda: len(caplog.records) >= 1)
    threading.Event().wait(0.3)  # several more checks above the limit: still one line
    assert [r.getMessage()[:15] for r in caplog.records] == ["capture stopped"]
    level["fill"] = 0.2
    wait_until(lambda: writer.enabled)
    submit(writer, "after")
    writer.close()
    assert [r.getMessage()[:15] for r in caplog.records] == ["capture stopped", "capture resumed"]
    assert recorded.enabled == [True, False, True]
    assert recorded.dropped == Counter({"disk_full": 5})
    assert [r["request_id"] for r in records(tmp_path / "capture")] == ["before", "after"]


def test_the_real_fill_level_above_the_setting_stops_capture_at_once(tmp_path: Path) -> None:
    assert 0.0 < disk_fill(tmp_path) < 1.0
    recorded = Recorded()
    writer = make_writer(tmp_path, recorded, max_fill=0.0001)
    assert not writer.enabled and recorded.enabled == [False]
    assert not submit(writer, "r", rows=4)
    writer.close()
    assert recorded.dropped == Counter({"disk_full": 4}) and not records(tmp_path / "capture")


def test_a_write_error_is_counted_and_the_writer_carries_on(tmp_path: Path) -> None:
    (tmp_path / "capture").mkdir()
    (tmp_path / "capture" / "blocked").write_text("a file where the model's folder would go")
    recorded = Recorded()
    writer = make_writer(tmp_path, recorded)
    submit(writer, "lost", rows=2, model="blocked")
    submit(writer, "kept", model="toy")
    writer.close()
    assert recorded.dropped == Counter({"error": 2}) and recorded.captured == 1
    assert [r["request_id"] for r in records(tmp_path / "capture")] == ["kept"]


def test_a_value_the_encoder_refuses_costs_only_its_request(tmp_path: Path) -> None:
    recorded = Recorded()
    writer = make_writer(tmp_path, recorded)
    writer.submit("bad", "toy", "1", {"x1": np.array([object()], dtype=object)}, 1, [1.0], None)
    submit(writer, "good")
    writer.close()
    assert recorded.dropped == Counter({"error": 1}) and recorded.captured == 1
    assert [r["request_id"] for r in records(tmp_path / "capture")] == ["good"]


def test_concurrent_submits_and_close_lose_nothing_uncounted(tmp_path: Path) -> None:
    """Every submitted row is either written or dropped and counted, even when close() races the submits."""
    recorded = Recorded()
    writer = make_writer(tmp_path, recorded, queue_rows=50)

    def client(number: int) -> None:
        for i in range(300):
            submit(writer, f"c{number}-{i}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    writer.close()
    for thread in threads:
        thread.join()
    assert len(records(tmp_path / "capture")) == recorded.captured
    assert recorded.captured + sum(recorded.dropped.values()) == 1200
    assert set(recorded.dropped) <= {"queue_full", "shutdown"}


def test_sampling_takes_about_the_fraction_and_whole_requests(tmp_path: Path) -> None:
    n, p = 2_000, 0.5
    writer = make_writer(tmp_path, sample=p)
    sampled = sum(submit(writer, f"r{i}", rows=1 + i % 3) for i in range(n))
    writer.close()
    bound = 5 * math.sqrt(n * p * (1 - p))  # five standard deviations of the binomial count
    assert abs(sampled - n * p) < bound, sampled
    rows: dict[str, list[int]] = {}
    for record in records(tmp_path / "capture"):
        rows.setdefault(record["request_id"], []).append(record["row"])
    assert len(rows) == sampled
    assert all(sorted(found) == list(range(1 + int(rid[1:]) % 3)) for rid, found in rows.items())


def test_nothing_is_sampled_at_zero_and_close_drops_later_rows(tmp_path: Path) -> None:
    recorded = Recorded()
    writer = make_writer(tmp_path, recorded, sample=0.0)
    assert not any(submit(writer, f"r{i}") for i in range(100))
    writer.close()
    assert recorded.dropped == Counter() and not records(tmp_path / "capture")
    recorded = Recorded()
    writer = make_writer(tmp_path / "2", recorded)
    writer.close()
    assert not submit(writer, "late", rows=2)
    assert recorded.dropped == Counter({"shutdown": 2})


@pytest.mark.parametrize("env, error", [
    ({"SERVING_CAPTURE_SAMPLE": "1.5"}, "SERVING_CAPTURE_SAMPLE must be a fraction"),
    ({"SERVING_CAPTURE_SAMPLE": "-0.1"}, "SERVING_CAPTURE_SAMPLE must be a fraction"),
    ({"SERVING_CAPTURE_SAMPLE": "half"}, "SERVING_CAPTURE_SAMPLE='half' is not a valid float"),
    ({"SERVING_CAPTURE_MAX_FILL": "0"}, "SERVING_CAPTURE_MAX_FILL must be a fraction above 0"),
    ({"SERVING_CAPTURE_MAX_FILL": "75"}, "SERVING_CAPTURE_MAX_FILL must be a fraction above 0"),
    ({"SERVING_CAPTURE_ROTATE_BYTES": "0"}, "SERVING_CAPTURE_ROTATE_BYTES must be at least 1"),
    ({"SERVING_CAPTURE_ROTATE_SECONDS": "0"}, "SERVING_CAPTURE_ROTATE_SECONDS must be positive"),
    ({"SERVING_CAPTURE_QUEUE_ROWS": "10"}, "SERVING_CAPTURE_QUEUE_ROWS (10) must be at least SERVING_MAX_ROWS"),
])
def test_bad_capture_settings_are_refused(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"SERVING_CAPTURE_DIR": "/tmp/capture", **env})
    assert error in str(raised.value)


def test_an_unusable_capture_dir_stops_the_app_naming_the_setting(make_app: Callable[..., Flask],
                                                                  tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(SettingsError, match=r"SERVING_CAPTURE_DIR=.*a-file/capture cannot be used"):
        make_app(capture_dir=tmp_path / "a-file" / "capture")


def test_capture_is_off_unless_a_directory_is_set() -> None:
    assert Settings.from_env({}).capture_dir is None
    assert Settings.from_env({"SERVING_CAPTURE_DIR": ""}).capture_dir is None
    assert Settings.from_env({"SERVING_CAPTURE_DIR": "/var/lib/capture"}).capture_dir == Path("/var/lib/capture")


# --- through the app ----------------------------------------------------------------------------------------------

@pytest.fixture
def capture_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(capture_dir=tmp_path / "capture")


def test_every_response_carries_a_request_id(capture_app: Flask) -> None:
    client = capture_app.test_client()
    mine = client.post("/predict", json=GOOD_ROW, headers={"X-Request-ID": "client-7"})
    made = client.post("/predict", json=GOOD_ROW)
    unsafe = client.post("/predict", json=GOOD_ROW, headers={"X-Request-ID": "bad id\t"})
    bad_input = client.post("/predict", json={"x1": "text"}, headers={"X-Request-ID": "client-8"})
    assert mine.headers["X-Request-ID"] == "client-7"
    assert len(made.headers["X-Request-ID"]) == 32 and made.headers["X-Request-ID"] != unsafe.headers["X-Request-ID"]
    assert "bad" not in unsafe.headers["X-Request-ID"]
    assert bad_input.status_code == 422 and bad_input.headers["X-Request-ID"] == "client-8"
    assert client.get("/nowhere").headers["X-Request-ID"]
    shutdown(capture_app)
    assert {r["request_id"] for r in records(capture_app.extensions["serving"].settings.capture_dir)} == \
        {"client-7", made.headers["X-Request-ID"], unsafe.headers["X-Request-ID"]}  # not the refused input


def test_the_app_captures_both_endpoints_with_the_validated_inputs(capture_app: Flask) -> None:
    client = capture_app.test_client()
    rows = [GOOD_ROW, {**GOOD_ROW, "x1": None, "kind": "q"}]
    predicted = client.post("/predict", json=rows, headers={"X-Request-ID": "p"})
    invoked = client.post("/invocations", data="x1,x2,count,kind\n0.5,-1.0,3,p\n", content_type="text/csv",
                          headers={"X-Request-ID": "i"})
    assert predicted.status_code == invoked.status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    shutdown(capture_app)
    found = {(r["request_id"], r["row"]): r for r in records(capture_app.extensions["serving"].settings.capture_dir)}
    assert sorted(found) == [("i", 0), ("p", 0), ("p", 1)]
    assert found[("p", 1)]["inputs"] == {"x1": None, "x2": -1.0, "count": 3.0, "kind": "q"}
    assert found[("i", 0)]["inputs"] == found[("p", 0)]["inputs"]  # CSV text validated to the same values
    assert [found[("p", i)]["prediction"] for i in (0, 1)] == pytest.approx(predicted.json["predictions"])
    assert found[("p", 0)]["model_version"] == predicted.headers["X-Model-Version"]
    assert "serving_capture_enabled 1.0" in metrics
    assert "serving_capture_shipped_files_total 0.0" in metrics


def test_the_app_captures_class_probabilities(make_app: Callable[..., Flask], store: Path, tmp_path: Path) -> None:
    point(store, "c1")  # before the app starts: its first pointer pins the model it serves
    app = make_app(capture_dir=tmp_path / "capture")
    response = app.test_client().post("/predict", json=GOOD_ROW)
    shutdown(app)
    (record,) = records(tmp_path / "capture")
    assert record["model_name"] == "toy-classifier"
    assert record["prediction"] == response.json["predictions"][0]
    assert record["probabilities"] == pytest.approx(response.json["probabilities"][0])


def test_without_a_capture_dir_nothing_is_written_and_the_gauge_says_off(client: Any, tmp_path: Path) -> None:
    assert client.post("/predict", json=GOOD_ROW).status_code == 200
    assert "serving_capture_enabled 0.0" in client.get("/metrics").get_data(as_text=True)
    assert client.application.extensions["serving"].capture is None


def test_capture_files_are_0600_and_their_directories_0700_under_a_permissive_umask(tmp_path: Path) -> None:
    """Rows of requests are the clients' data: only the server's user reads them, whatever umask it was started
    with (000 here: without the explicit modes, the files would be 0666 and the directories 0777)."""
    previous = os.umask(0)
    try:
        recorded = Recorded()
        writer = make_writer(tmp_path, recorded)
        assert submit(writer, "r1")
        wait_until(lambda: recorded.captured == 1)
        part = next((tmp_path / "capture").rglob(f"*{PART}"))
        assert stat.S_IMODE(part.stat().st_mode) == 0o600  # from its creation, not only once closed
        writer.close()
    finally:
        os.umask(previous)
    root = tmp_path / "capture"
    files = list(closed_files(root))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    for folder in (root, files[0].parent, files[0].parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert read_records(files[0])[0]["request_id"] == "r1"
