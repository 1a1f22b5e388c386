"""Real processes on loopback: a gunicorn prediction server, a client polling one, a moto server standing in for AWS.

Whatever uses them starts a process, so its test is marked `integration` (tests/conftest.py checks that).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Iterator
from unittest import mock

from tests.support.bundles import GOOD_ROW
from tests.support.network import free_port, get_json, wait_for_http
from tests.support.project import REPO
from tests.support.signing import public_key_file


class PredictionServer:
    """A real gunicorn prediction server in its own process group, stopped on exit."""

    def __init__(self, store: Path, port: int, log_path: Path, workers: int = 2, **env: str) -> None:
        self.store, self.port, self.log_path = store, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "SERVING_MODEL_STORE": str(store), "SERVING_BIND": f"127.0.0.1:{port}",
                    "SERVING_WORKERS": str(workers), "SERVING_POLL_SECONDS": "0.2", "SERVING_ACCESS_LOG": "",
                    "SERVING_PUBLIC_KEY": str(public_key_file()), "PYTHONPATH": str(REPO),
                    # A browser's idle keep-alive connections would hold a graceful stop for the default 30 s.
                    "SERVING_GRACEFUL_TIMEOUT": "5", **env}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PredictionServer:
        return self.start().ready()

    def start(self) -> PredictionServer:
        """Start gunicorn without waiting for it (several servers then load at once); ready() waits."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "serving" / "gunicorn.conf.py")],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ready(self) -> PredictionServer:
        """Wait until /health answers; raises with the log's tail if gunicorn exits or takes over 60 s."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                get_json(f"{self.url}/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"gunicorn did not answer within 60s:\n{self.log()}")

    def __exit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def worker_pids(self) -> set[int]:
        """The gunicorn master's child processes: its workers, loaded or still loading."""
        assert self.process is not None
        return {int(pid) for pid in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
                .split()}


class Poller:
    """A client posting `row` to /predict until stopped, counting (status, model version) pairs. `pause` seconds
    between requests keep a long run (a whole release) from taking a core from the servers under test."""

    def __init__(self, url: str, row: dict[str, Any] | None = None, pause: float = 0.0) -> None:
        self.url, self.body, self.pause = url, json.dumps(row or GOOD_ROW).encode(), pause
        self.outcomes: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.pause):  # wait(0): just whether it is set
            request = urllib.request.Request(f"{self.url}/predict", self.body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.outcomes[(response.status, response.headers["X-Model-Version"])] += 1
            except urllib.error.HTTPError as exc:
                self.outcomes[(exc.code, None)] += 1
            except OSError as exc:
                self.outcomes[(type(exc).__name__, None)] += 1

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def failures(self) -> Counter:
        return Counter({key: n for key, n in self.outcomes.items() if key[0] != 200})

    def versions(self) -> set[str]:
        return {version for (status, version) in self.outcomes if status == 200}


@contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """A real moto server on a free loopback port standing in for AWS; yields its endpoint URL."""
    port = free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                   "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            wait_for_http(endpoint)
            yield endpoint
        finally:
            server.terminate()
            server.wait(timeout=10)


def aws_test_credentials() -> ContextManager[dict[str, str]]:
    """Fake AWS credentials and region in os.environ for the duration (botocore refuses to sign without them)."""
    return mock.patch.dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                           AWS_DEFAULT_REGION="us-east-1")
