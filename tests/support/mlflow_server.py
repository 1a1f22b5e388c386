"""A real MLflow tracking server running the production login: `mlflow server --app-name basic-auth` with the
config scripts/stack_settings.py writes (NO_PERMISSIONS, scripts/mlflow_auth.py's registry writers), on SQLite in a
temp dir.

Whatever uses it starts a process, so its test is marked `integration` (tests/conftest.py checks that).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from scripts.stack_settings import mlflow_auth_config
from tests.support.network import free_port
from tests.support.project import REPO


@dataclass(frozen=True)
class AuthServer:
    url: str
    admin: tuple[str, str]  # the pipeline's login: the server's admin, its only registry writer
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def basic_auth_mlflow_server(home: Path, admin_user: str = "pipeline") -> Iterator[AuthServer]:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "basic_auth.ini"
    config.write_text(mlflow_auth_config(f"sqlite:///{home / 'basic_auth.db'}", admin_user))
    password, port = secrets.token_urlsafe(18), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_USERNAME=admin_user,
               MLFLOW_AUTH_ADMIN_PASSWORD=password, MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONPATH=str(REPO))
    log_path = home / "mlflow.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
             "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--default-artifact-root",
             str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = AuthServer(f"http://127.0.0.1:{port}", (admin_user, password), log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{server.log()}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2):
                    break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow server did not answer within 120 s:\n{server.log()}") from None
                time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
