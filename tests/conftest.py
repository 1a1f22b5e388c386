"""Fixtures shared by every test tier."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "include" / "config"
WINE_CSV = REPO / "data" / "wine-quality" / "winequality-red.csv"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private copy of include/config that a test may edit."""
    target = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, target)
    return target


@pytest.fixture
def edit_yaml() -> Callable[[Path, Callable[[dict[str, Any]], None]], None]:
    """Load a YAML file, let the test change the data, write it back."""
    def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return edit


def outputs_env(root: Path) -> dict[str, str]:
    """MLOPS_* settings sending every output under `root`: artifacts, the MLflow store, the local model store
    (and a serving URL where nothing listens), so tests never touch the project's own."""
    return {"MLOPS_ARTIFACTS_ROOT": str(root / "artifacts"), "MLOPS_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "MLOPS_ARTIFACT_LOCATION": str(root / "mlartifacts"), "MLOPS_MODEL_STORE": str(root / "models"),
            "MLOPS_SERVING_URL": f"http://127.0.0.1:{free_port()}"}


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Send artifacts, the MLflow store and the local model store to a temp dir."""
    root = tmp_path / "outputs"
    for name, value in outputs_env(root).items():
        monkeypatch.setenv(name, value)
    for name in ("MLOPS_SOURCE_URI", "MLOPS_CONFIG_DIR", "MLFLOW_TRACKING_URI", "MLOPS_DEPLOY_TARGET",
                 "MLOPS_S3_BUCKET", "SERVING_URL", "SERVING_MODEL_STORE"):
        monkeypatch.delenv(name, raising=False)
    root.mkdir(parents=True)
    return root


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real moto server on loopback standing in for S3 (AWS is the one thing tests cannot reach)."""
    import os
    import subprocess
    import sys

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        wait_for_http(endpoint)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
