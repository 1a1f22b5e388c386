"""Oversized and deeply nested bodies against a real gunicorn worker: answered 4xx fast, with the worker's peak
memory (VmHWM) read from /proc."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.bodies import SHAPES, large_body, nested
from tests.support.bundles import GOOD_ROW, copy_store
from tests.support.network import free_port, get_json
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration

PEAK_LIMIT_MB = 200  # above the idle worker, for a 10 MB body
SECONDS = 3.0  # 0.05-0.12 s on a quiet 2-core box; up to 2.2 s before (8 s on a busy one)


def one_thread_server(bundles: Path, root: Path) -> PredictionServer:
    """One worker with one thread: every request runs in the process whose memory is read."""
    store = copy_store(bundles, root / "store", current="1")
    return PredictionServer(store, free_port(), root / "gunicorn.log", workers=1, SERVING_THREADS="1")


@pytest.fixture(scope="module")
def one_worker(bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServer]:
    with one_thread_server(bundles, tmp_path_factory.mktemp("limits")) as running:
        yield running


@pytest.fixture
def fresh_one_worker(bundles: Path, tmp_path: Path) -> Iterator[PredictionServer]:
    """Started for one test: VmHWM cannot always be reset, and a fresh worker's is its idle peak."""
    with one_thread_server(bundles, tmp_path) as running:
        yield running


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any], float]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    return status, json.loads(data), time.perf_counter() - started


def memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def peak_over_idle(server: PredictionServer, path: str, body: bytes,
                   content_type: str) -> tuple[int, dict[str, Any], float, float]:
    """(status, answer, seconds, the worker's peak MB above its resident size just before the request)."""
    pid = get_json(f"{server.url}/health")["pid"]
    post(f"{server.url}/predict", json.dumps(GOOD_ROW).encode(), "application/json")  # warm: lazy set-up is not ours
    try:  # Linux >= 4.0 resets VmHWM to VmRSS; without it the measure only errs high (an earlier peak counts)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
    idle = memory_mb(pid)["VmRSS"]
    status, answer, seconds = post(f"{server.url}{path}", body, content_type)
    return status, answer, seconds, memory_mb(pid)["VmHWM"] - idle


def test_10_mb_columnar_body_is_413_within_200_mb(fresh_one_worker: PredictionServer) -> None:
    """The review's case: counting rows after building a dict per row took 5 s and +1 GB (one column of 0s: 8 s)."""
    path, content_type, body = large_body("columnar")
    status, answer, seconds, peak = peak_over_idle(fresh_one_worker, path, body, content_type)
    assert status == 413 and answer["error"]["code"] == "too_many_values", answer  # counted from its commas
    assert peak < PEAK_LIMIT_MB, f"worker peak +{peak:.0f} MB for a {len(body) >> 20} MB body"
    assert seconds < SECONDS


@pytest.mark.parametrize("shape", [shape for shape in SHAPES if shape != "columnar"])
def test_10_mb_bodies_of_every_shape_are_413_fast(one_worker: PredictionServer, shape: str) -> None:
    path, content_type, body = large_body(shape)
    status, answer, seconds, peak = peak_over_idle(one_worker, path, body, content_type)
    # CSV counts its lines; JSON its values, from its commas, without telling rows from columns
    expected = "too_many_rows" if content_type == "text/csv" else "too_many_values"
    assert status == 413 and answer["error"]["code"] == expected, answer
    assert seconds < SECONDS, f"{seconds:.1f} s"
    assert peak < PEAK_LIMIT_MB, f"worker peak +{peak:.0f} MB"


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("path, template", [
    ("/predict", "{}"),
    ("/invocations", '{{"dataframe_records": [{}]}}'),
    ("/invocations", '{{"dataframe_records": [{{"x1": 0.5}}], "params": {{"p": {}}}}}'),
], ids=["bare", "in-the-rows", "in-params"])
def test_deep_nesting_is_400_without_a_traceback(one_worker: PredictionServer, path: str, template: str,
                                                 kind: str) -> None:
    started = time.perf_counter()
    body = template.format(nested(10_000, kind)).encode()
    status, answer, _ = post(f"{one_worker.url}{path}", body, "application/json")
    assert status == 400 and answer["error"]["code"] == "too_deeply_nested", answer
    assert time.perf_counter() - started < SECONDS
    assert "Traceback" not in one_worker.log() and "RecursionError" not in one_worker.log()
    assert get_json(f"{one_worker.url}/health")["status"] == "ok"
