"""What the DAG tasks share (dags/stage_tasks.py): the MLflow login taken from an Airflow connection.

Airflow runs in a fresh interpreter (importing it here would reconfigure logging for every other test); the
connection comes from Airflow's environment-variable secrets backend, as a deployment's secrets manager would
provide it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.project import REPO

pytestmark = pytest.mark.integration  # a fresh interpreter per case

LOGIN = """
import json, os
from dags.stage_tasks import _mlflow_login_from_connection
_mlflow_login_from_connection()
print(json.dumps([os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")]))
"""


def login(tmp_path: Path, **env: str) -> list[str | None]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING_"))}
    done = subprocess.run([sys.executable, "-c", LOGIN], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**clean, "AIRFLOW_HOME": str(tmp_path), "PYTHONPATH": str(REPO), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_mlflow_default_connection_is_the_tasks_mlflow_login(tmp_path: Path) -> None:
    connection = json.dumps({"conn_type": "http", "login": "pipeline", "password": "s3cret"})
    assert login(tmp_path, AIRFLOW_CONN_MLFLOW_DEFAULT=connection) == ["pipeline", "s3cret"]
    # over what the environment says
    assert login(tmp_path, AIRFLOW_CONN_MLFLOW_DEFAULT=connection, MLFLOW_TRACKING_USERNAME="admin",
                 MLFLOW_TRACKING_PASSWORD="from-env") == ["pipeline", "s3cret"]


def test_without_the_connection_the_environment_is_left_as_it_is(tmp_path: Path) -> None:
    assert login(tmp_path) == [None, None]
    assert login(tmp_path, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="x") == ["admin", "x"]
