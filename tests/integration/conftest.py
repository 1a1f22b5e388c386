"""A real Airflow 3 stack (scripts/airflow_stack.sh) in a temp AIRFLOW_HOME on free ports.

The stack's environment sends every pipeline output (artifacts, the MLflow store) to the same
temp dir, so tests never touch the project's own artifacts/, mlruns/ or airflow_home/; the
variables reach the task processes because each component inherits them from the script.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO, free_port, outputs_env
from scripts.airflow_client import AirflowClient

STACK_SCRIPT = REPO / "scripts" / "airflow_stack.sh"
TIMINGS: dict[str, float] = {}


@dataclass
class AirflowStack:
    home: Path
    outputs: Path
    env: dict[str, str]
    api_url: str
    mlflow_url: str
    serving_url: str
    client: AirflowClient
    timings: dict[str, float] = field(default_factory=lambda: TIMINGS)

    @property
    def artifacts_root(self) -> Path:
        return Path(self.env["MLOPS_ARTIFACTS_ROOT"])

    @property
    def tracking_uri(self) -> str:
        return self.env["MLOPS_TRACKING_URI"]

    def script(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(STACK_SCRIPT), command], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.home / "stack").glob("*.log")):
            out.append(f"--- {log.name}")
            out += log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    if sys.platform != "linux":
        pytest.skip("scripts/airflow_stack.sh needs Linux (/proc, setsid)")
    base = tmp_path_factory.mktemp("airflow_stack")
    outputs = base / "outputs"
    api_port, mlflow_port, serving_port = _free_ports(3)
    # Nothing from the caller's Airflow, MLflow or pipeline settings leaks into the test stack.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLOPS_")) and k != "MLFLOW_TRACKING_URI"}
    env.update(
        AIRFLOW_STACK_HOME=str(base / "home"),
        AIRFLOW_STACK_API_PORT=str(api_port),
        AIRFLOW_STACK_MLFLOW_PORT=str(mlflow_port),
        AIRFLOW_STACK_SERVING_PORT=str(serving_port),
        AIRFLOW_STACK_ADMIN_PASSWORD=secrets.token_urlsafe(12),
        AIRFLOW_STACK_VENV=sys.prefix,
        AIRFLOW_STACK_TIMEOUT="150",
        **outputs_env(outputs),
        # Only the runs a test triggers: no cron runs, whatever the time of day.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        # The killed-task test waits for a retry: 1 s instead of 30 s (then exponential backoff).
        MLOPS_RETRY_DELAY_SECONDS="1",
    )
    outputs.mkdir(parents=True)
    stack = AirflowStack(
        home=base / "home", outputs=outputs, env=env,
        api_url=f"http://127.0.0.1:{api_port}", mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        serving_url=f"http://127.0.0.1:{serving_port}",
        client=AirflowClient(f"http://127.0.0.1:{api_port}", "admin", env["AIRFLOW_STACK_ADMIN_PASSWORD"]),
    )
    started = time.monotonic()
    try:
        up = stack.script("up")
        if up.returncode != 0:
            pytest.fail(f"scripts/airflow_stack.sh up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                        f"{stack.log_tails()}", pytrace=False)
        TIMINGS["stack start-up (s)"] = time.monotonic() - started
        yield stack
    finally:
        stopping = time.monotonic()
        down = stack.script("down", timeout=120)
        TIMINGS["stack shutdown (s)"] = time.monotonic() - stopping
        if down.returncode != 0:
            print(f"scripts/airflow_stack.sh down failed:\n{down.stdout}\n{down.stderr}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "airflow stack timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """test_dag_run.py expects the session stack's MLflow store still empty (its run registers version 1):
    run it before any other test on that stack (test_dag_failures.py sorts, and would run, first)."""
    on_stack = [item for item in items if "airflow_stack" in getattr(item, "fixturenames", ())]
    fresh = [item for item in on_stack if item.path.name == "test_dag_run.py"]
    others = [item for item in items if item not in fresh]
    first_other = next((item for item in others if item in on_stack), None)
    if fresh and first_other is not None:
        at = others.index(first_other)
        items[:] = others[:at] + fresh + others[at:]
