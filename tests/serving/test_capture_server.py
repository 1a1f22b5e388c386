"""Prediction capture on a real gunicorn server (2 workers, threads) under concurrent load: one record per row of
every answered request, none lost across a hot swap and a worker restart; a full disk stops capture, not requests."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from serving.capture import closed_files, read_records
from tests.support.bundles import GOOD_ROW
from tests.support.network import free_port, get_json, wait_until
from tests.support.pointers import point
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration  # real gunicorn servers


class Traffic:
    """Client threads posting /predict (1 or 3 rows; half with their own X-Request-ID), recording each answer."""

    def __init__(self, url: str, clients: int = 6) -> None:
        self.url, self.clients = url, clients
        self.answers: list[dict[str, Any]] = []
        self._stop, self._lock = threading.Event(), threading.Lock()

    def _client(self, number: int) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            rows = [GOOD_ROW] * (3 if sent % 4 == 0 else 1)
            headers = {"Content-Type": "application/json"}
            if sent % 2:
                headers["X-Request-ID"] = f"client{number}:{sent}"
            request = urllib.request.Request(f"{self.url}/predict", json.dumps(rows).encode(), headers)
            try:
                with urllib.request.urlopen(request, timeout=15) as response:
                    answer = {"status": response.status, "id": response.headers["X-Request-ID"], "rows": len(rows),
                              "version": response.headers["X-Model-Version"], "sent_id": headers.get("X-Request-ID")}
            except urllib.error.HTTPError as exc:
                answer = {"status": exc.code}
            except OSError as exc:
                answer = {"status": type(exc).__name__}
            with self._lock:
                self.answers.append(answer)

    def __enter__(self) -> "Traffic":
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return sum(values)


def capturing(directory: Path) -> set[int]:
    """The pids of the workers with capture files (open or closed) under `directory`."""
    return {int(found.group(1)) for path in directory.rglob("*")
            if (found := re.search(r"-(\d+)-\d{8}T", path.name))}


def records(directory: Path) -> list[dict[str, Any]]:
    return [r for path in closed_files(directory) for r in read_records(path)]


def test_every_answered_row_is_captured_once_across_a_hot_swap_and_a_worker_restart(store: Path,
                                                                                      tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", SERVING_CAPTURE_DIR=str(capture),
                          SERVING_CAPTURE_ROTATE_SECONDS="1") as server:
        with Traffic(server.url) as traffic:
            wait_until(lambda: len(traffic.answers) > 100, timeout=60)
            point(server.store, "2")  # the workers follow the pointer: a hot swap mid-load
            wait_until(lambda: any(a.get("version") == "2" for a in traffic.answers[-20:]), timeout=60)
            workers = server.worker_pids()
            # A worker that has captured rows (a worker may not have been given a request yet, under load).
            wait_until(lambda: workers & capturing(capture), timeout=30)
            victim = min(workers & capturing(capture))
            os.kill(victim, signal.SIGTERM)  # gunicorn replaces it; its queued rows must still be written
            wait_until(lambda: len(server.worker_pids() - workers) == 1, timeout=60)
            (replacement,) = server.worker_pids() - workers
            # Answering /health means it has loaded its model and takes connections (predictions too, from now on).
            wait_until(lambda: get_json(f"{server.url}/health")["pid"] == replacement, timeout=60, interval=0.05)
            answered = len(traffic.answers)
            wait_until(lambda: len(traffic.answers) > answered + 100, timeout=60)
        assert [a for a in traffic.answers if a["status"] != 200] == []
        expected_rows = sum(a["rows"] for a in traffic.answers)
        wait_until(lambda: metric(server.url, "serving_capture_rows_total") == expected_rows, timeout=30)
        assert metric(server.url, "serving_capture_enabled") == 1.0
    found = records(capture)
    expected = Counter((a["id"], row) for a in traffic.answers for row in range(a["rows"]))
    assert Counter((r["request_id"], r["row"]) for r in found) == expected  # exactly once each, no stranger
    assert len(expected) == expected_rows
    version_of = {a["id"]: a["version"] for a in traffic.answers}
    assert all(r["model_version"] == version_of[r["request_id"]] for r in found)
    assert {r["model_version"] for r in found} == {"1", "2"}
    assert all(a["id"] == a["sent_id"] for a in traffic.answers if a["sent_id"])  # the client's own ids kept
    pids = {int(re.search(r"-(\d+)-\d{8}T", path.name).group(1)) for path in closed_files(capture)}
    assert {victim, replacement} <= pids <= workers | {replacement}, pids  # the victim's files and its replacement's
    assert not list(capture.rglob("*.part"))


def test_a_full_disk_stops_capture_without_failing_a_request(store: Path, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    log_path = tmp_path / "gunicorn.log"
    with PredictionServer(store, free_port(), log_path, SERVING_CAPTURE_DIR=str(capture),
                          SERVING_CAPTURE_MAX_FILL="0.0001") as server:
        statuses = Counter()
        for _ in range(40):
            request = urllib.request.Request(f"{server.url}/predict", json.dumps(GOOD_ROW).encode(),
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=15) as response:
                statuses[response.status] += 1
        assert statuses == Counter({200: 40})
        assert metric(server.url, "serving_capture_enabled") == 0.0
        text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
        assert 'serving_capture_dropped_rows_total{reason="disk_full"} 40.0' in text
    assert records(capture) == []
    assert server.log().count("capture stopped: the disk of") == 2  # one line per worker
