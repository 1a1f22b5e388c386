"""The production topology on this machine's own services: PostgreSQL, Redis, a moto S3 server.

`celery_stack` runs scripts/airflow_stack.sh with environment settings only (no code differs from
the embedded stack): CeleryExecutor, metadata DB in a fresh PostgreSQL database, Redis as broker,
two Celery workers as separate processes, and an MLflow tracking server on a second fresh
PostgreSQL database with artifacts in S3. Each session gets its own databases, Redis DB number
and key prefix, S3 bucket, ports and temp dirs, and removes all of them afterwards.

The services default to PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on
127.0.0.1:6379; TOPOLOGY_POSTGRES_DSN and TOPOLOGY_REDIS_URL point elsewhere. A missing service
skips these tests with the reason, except under CI=true, where it fails them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from scripts.airflow_client import AirflowClient
from tests.conftest import REPO, free_port

log = logging.getLogger(__name__)

STACK_SCRIPT = REPO / "scripts" / "airflow_stack.sh"
POSTGRES_DSN = os.environ.get("TOPOLOGY_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TOPOLOGY_REDIS_URL", "redis://127.0.0.1:6379")
WORKERS = 2
TIMINGS: dict[str, float] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def unavailable(reason: str) -> None:
    """Skip with the reason on a developer's machine; fail under CI, where the service must be there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def _address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _reachable(address: tuple[str, int]) -> bool:
    import socket

    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def pg_url(database: str, driver: str = "") -> str:
    """POSTGRES_DSN for another database; with a driver, as SQLAlchemy wants it (2.1 defaults to psycopg 3)."""
    parts = urlsplit(POSTGRES_DSN)
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return parts._replace(scheme=scheme, path=f"/{database}").geturl()


# --- services -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[dict[str, str]]:
    """Two fresh databases: {"airflow": "airflow_test_<token>", "mlflow": "mlflow_test_<token>"}."""
    host, port = _address(POSTGRES_DSN, 5432)
    if not _reachable((host, port)):
        unavailable(f"PostgreSQL is not reachable at {host}:{port} (TOPOLOGY_POSTGRES_DSN)")
    import psycopg2

    token = secrets.token_hex(4)
    names = {"airflow": f"airflow_test_{token}", "mlflow": f"mlflow_test_{token}"}
    admin = psycopg2.connect(POSTGRES_DSN)
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield names
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@dataclass(frozen=True)
class RedisBroker:
    url: str  # with the DB number
    prefix: str  # every key and channel of this session's Celery starts with it


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[RedisBroker]:
    """A Redis DB number and key prefix of this session's own; its keys are deleted afterwards."""
    host, port = _address(REDIS_URL, 6379)
    if not _reachable((host, port)):
        unavailable(f"Redis is not reachable at {host}:{port} (TOPOLOGY_REDIS_URL)")
    import redis

    databases = int(redis.Redis.from_url(REDIS_URL).config_get("databases").get("databases", 16))
    number = 1 + secrets.randbelow(max(databases - 1, 1))  # not 0, the DB other clients use by default
    broker = RedisBroker(url=f"{REDIS_URL.rstrip('/')}/{number}", prefix=f"mlops_test_{secrets.token_hex(4)}:")
    try:
        yield broker
    finally:
        client = redis.Redis.from_url(broker.url)
        keys = list(client.scan_iter(match=f"{broker.prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    """A bucket on the session's moto server (tests/conftest.py) for the MLflow artifacts."""
    import boto3

    name = f"mlflow-topology-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


# --- the stack ------------------------------------------------------------------------------------


@dataclass
class CeleryStack:
    home: Path
    outputs: Path
    env: dict[str, str]
    api_url: str
    mlflow_url: str
    databases: dict[str, str]  # role (airflow, mlflow) -> database name
    broker: RedisBroker
    s3_endpoint: str
    bucket: str
    client: AirflowClient
    workers: dict[str, str]  # component (worker-1) -> Celery node name, the hostname its tasks record
    timings: dict[str, float] = field(default_factory=lambda: TIMINGS)

    @property
    def artifacts_root(self) -> Path:
        return Path(self.env["MLOPS_ARTIFACTS_ROOT"])

    def script(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(STACK_SCRIPT), command], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def worker_pid(self, component: str) -> int:
        return int((self.home / "stack" / f"{component}.pid").read_text().split()[0])

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for path in sorted((self.home / "stack").glob("*.log")):
            out.append(f"--- {path.name}")
            out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


def _celery_env(base: Path, databases: dict[str, str], broker: RedisBroker, s3_endpoint: str, bucket: str,
                api_port: int, mlflow_port: int) -> dict[str, str]:
    outputs = base / "outputs"
    # Nothing from the caller's Airflow, MLflow, pipeline or AWS settings leaks into the test stack.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_", "AWS_"))}
    env.update(
        AIRFLOW_STACK_HOME=str(base / "home"),
        AIRFLOW_STACK_API_PORT=str(api_port),
        AIRFLOW_STACK_MLFLOW_PORT=str(mlflow_port),
        AIRFLOW_STACK_ADMIN_PASSWORD=secrets.token_urlsafe(12),
        AIRFLOW_STACK_VENV=sys.prefix,
        AIRFLOW_STACK_TIMEOUT="180",
        # The production topology, by environment settings only.
        AIRFLOW_STACK_EXECUTOR="celery",
        AIRFLOW_STACK_SQL_CONN=pg_url(databases["airflow"], "psycopg2"),
        AIRFLOW_STACK_BROKER_URL=broker.url,
        AIRFLOW_STACK_WORKERS=str(WORKERS),
        AIRFLOW_STACK_WORKER_CONCURRENCY="1",  # one task at a time each: where a task runs is then clear-cut
        AIRFLOW_STACK_MLFLOW_BACKEND_URI=pg_url(databases["mlflow"], "psycopg2"),
        AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=broker.prefix,
        MLOPS_ARTIFACTS_ROOT=str(outputs / "artifacts"),
        MLOPS_ARTIFACT_LOCATION=f"s3://{bucket}/mlflow",
        # No deployment and no prediction server: the topology under test ends at the registry (and the
        # project's models/ stays untouched).
        MLOPS_DEPLOY_TARGET="none",
        AIRFLOW_STACK_SERVING="0",
        AWS_ENDPOINT_URL_S3=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # Only the runs a test triggers: no cron runs, whatever the time of day.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        # A killed worker's task is noticed (no heartbeat) after 20 s, not 5 min, and retried after ~1 s.
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
        MLOPS_RETRY_DELAY_SECONDS="1",
    )
    outputs.mkdir(parents=True)
    return env


@pytest.fixture(scope="session")
def celery_stack(tmp_path_factory: pytest.TempPathFactory, redis_broker: RedisBroker,
                 postgres_databases: dict[str, str], s3_endpoint: str, s3_bucket: str) -> Iterator[CeleryStack]:
    if sys.platform != "linux":
        pytest.skip("scripts/airflow_stack.sh needs Linux (/proc, setsid)")
    if shutil.which("ps") is None:
        unavailable("`ps` (procps) is needed by scripts/airflow_stack.sh down")
    base = tmp_path_factory.mktemp("celery_stack")
    api_port = free_port()
    mlflow_port = free_port()
    while mlflow_port == api_port:
        mlflow_port = free_port()
    env = _celery_env(base, postgres_databases, redis_broker, s3_endpoint, s3_bucket, api_port, mlflow_port)
    host = os.environ.get("HOSTNAME") or subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    stack = CeleryStack(
        home=base / "home", outputs=base / "outputs", env=env,
        api_url=f"http://127.0.0.1:{api_port}", mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        databases=postgres_databases, broker=redis_broker, s3_endpoint=s3_endpoint, bucket=s3_bucket,
        client=AirflowClient(f"http://127.0.0.1:{api_port}", "admin", env["AIRFLOW_STACK_ADMIN_PASSWORD"]),
        workers={f"worker-{n}": f"worker-{n}@{host}" for n in range(1, WORKERS + 1)},
    )
    started = time.monotonic()
    try:
        up = stack.script("up")
        if up.returncode != 0:
            pytest.fail(f"airflow_stack.sh up (celery) failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                        f"{stack.log_tails()}", pytrace=False)
        TIMINGS["celery stack start-up (s)"] = time.monotonic() - started
        log.info("celery stack up: %s", up.stdout)
        yield stack
    finally:
        stopping = time.monotonic()
        down = stack.script("down", timeout=180)
        TIMINGS["celery stack shutdown (s)"] = time.monotonic() - stopping
        if down.returncode != 0:
            print(f"airflow_stack.sh down failed:\n{down.stdout}\n{down.stderr}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "production topology timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")

