"""Load on a real prediction server: wrk for volume (a Lua script POSTs one body; every non-2xx answer and socket
error is counted), and Python threads on keep-alive connections where each answer must be counted by model."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest

WRK = shutil.which("wrk")
WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("LOAD_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("LOAD_RESULT_FILE"), "w"))
  local e = summary.errors
  out:write(string.format('{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p99_us": %d}', summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(99)))
  out:close()
end
"""


def require_wrk() -> str:
    """wrk's path; a missing wrk skips the test, except under CI=true, where it fails it (`make tools`)."""
    if WRK is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("wrk is required under CI: apt-get install -y wrk (or `make tools`)", pytrace=False)
        pytest.skip("wrk is not installed (`make tools` installs it)")
    return WRK


class WrkLoad:
    """wrk POSTing `body` to `url` with `connections` connections from one thread until the block ends (SIGINT:
    wrk stops, then reports). `result`: requests, and the failures by kind (status: non-2xx/3xx answers; connect,
    read, write, timeout: socket errors)."""

    def __init__(self, url: str, body: dict[str, Any] | list[Any], workdir: Path, connections: int = 8,
                 max_seconds: int = 120) -> None:
        self.url, self.workdir = url, workdir
        self.connections, self.max_seconds = connections, max_seconds
        self.body_file, self.result_file = workdir / "wrk-body.json", workdir / "wrk-result.json"
        self.body_file.write_text(json.dumps(body))
        self.result: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WrkLoad:
        script = self.workdir / "wrk-post.lua"
        script.write_text(WRK_SCRIPT)
        self.result_file.unlink(missing_ok=True)
        env = {**os.environ, "LOAD_BODY_FILE": str(self.body_file), "LOAD_RESULT_FILE": str(self.result_file)}
        self._process = subprocess.Popen(
            [require_wrk(), "-t1", f"-c{self.connections}", f"-d{self.max_seconds}s", "--timeout", "10s", "-s",
             str(script), self.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        output, _ = self._process.communicate(timeout=30)
        if not self.result_file.exists():
            raise RuntimeError(f"wrk wrote no result (exit {self._process.returncode}): {output.decode()[-2000:]}")
        self.result = json.loads(self.result_file.read_text())

    @property
    def failed(self) -> dict[str, int]:
        return {kind: n for kind in ("status", "connect", "read", "write", "timeout") if (n := self.result[kind])}


def count_answers(url: str, path: str, body: Any, requests: int, threads: int = 6,
                  headers: Callable[[int], dict[str, str]] = lambda i: {}) -> Counter:
    """POST `body` `requests` times from `threads` keep-alive connections; the answers counted by
    (status, X-Model-Version, the request's X-Client-Key or None)."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    numbers = itertools.count()
    lock = threading.Lock()
    found: Counter = Counter()

    def client() -> None:
        mine: Counter = Counter()
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            while (i := next(numbers)) < requests:
                extra = headers(i)
                connection.request("POST", path, data, {"Content-Type": "application/json", **extra})
                response = connection.getresponse()
                response.read()
                mine[(response.status, response.getheader("X-Model-Version"), extra.get("X-Client-Key"))] += 1
        finally:
            connection.close()
            with lock:
                found.update(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return found
