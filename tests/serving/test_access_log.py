"""The access log is written off the request threads: a stalled log reader does not stall requests,
and every line still arrives."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.bundles import GOOD_ROW
from tests.support.network import free_port, get_json
from tests.support.project import REPO
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration  # a real gunicorn server

REQUESTS = 1500  # ~190 KB of access log: three times what a pipe holds before its writer blocks


def test_requests_keep_answering_while_nobody_reads_the_log_and_no_line_is_lost(store: Path, tmp_path: Path) -> None:
    port = free_port()
    env = PredictionServer(store, port, tmp_path / "unused.log", workers=1, SERVING_ACCESS_LOG="-").env
    # stdout is a pipe that nobody reads until the requests are done, like a journald that has stalled.
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(REPO / "serving" / "gunicorn.conf.py")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.2)
        body = json.dumps(GOOD_ROW).encode()
        for _ in range(REQUESTS):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        output: list[bytes] = []
        reader = threading.Thread(target=lambda: output.append(server.stdout.read()))
        reader.start()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        reader.join(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    logged = re.findall(rb'"POST /predict HTTP/1\.1" 200', b"".join(output))
    assert len(logged) == REQUESTS
