"""Real Airflow 3 stacks (scripts/airflow_stack.sh) in temp dirs on free ports, started and stopped by fixtures.

`running_airflow_stack`: the embedded stack (LocalExecutor, SQLite, the MLflow UI and a prediction server).
Its environment sends every pipeline output (artifacts, the MLflow store, the model store) to the same temp
dir, so tests never touch the project's own artifacts/, mlruns/ or airflow_home/; the variables reach the task
processes because each component inherits them from the script.

`running_celery_stack`: the production topology on this machine's own services, by environment settings only
(no code differs from the embedded stack): CeleryExecutor, metadata DB in a fresh PostgreSQL database, Redis as
broker, two Celery workers as separate processes, and an MLflow tracking server on a second fresh PostgreSQL
database with artifacts in S3 (a moto server). It runs with the production logins: the FAB auth manager, and
MLflow's basic-auth app, whose admin the tasks log in as. The tune stage's shared Optuna study lives in a third
fresh database (MLOPS_TUNING_STORAGE): Optuna keeps its own alembic_version table. Each session gets its own
databases, Redis DB number and key prefix, S3 bucket, ports, temp dirs and passwords, and removes all of them
afterwards.

The services default to PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on 127.0.0.1:6379;
TOPOLOGY_POSTGRES_DSN and TOPOLOGY_REDIS_URL point elsewhere. A missing service skips the tests that need it
with the reason (`unavailable`), except under CI=true, where it fails them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from scripts.airflow_client import AirflowClient
from tests.support.network import free_ports
from tests.support.project import REPO, edit_yaml, outputs_env, small_leakage_budget
from tests.support.session_report import AIRFLOW_TIMINGS, CELERY_TIMINGS

log = logging.getLogger(__name__)

STACK_SCRIPT = REPO / "scripts" / "airflow_stack.sh"
POSTGRES_DSN = os.environ.get("TOPOLOGY_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TOPOLOGY_REDIS_URL", "redis://127.0.0.1:6379")
WORKERS = 2


def run_stack_script(command: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(STACK_SCRIPT), command], env=env, capture_output=True, text=True,
                          timeout=timeout)


def stack_log_tails(home: Path, lines: int = 30) -> str:
    out = []
    for path in sorted((home / "stack").glob("*.log")):
        out.append(f"--- {path.name}")
        out += path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(out)


# --- the embedded stack (LocalExecutor) ----------------------------------------------------------------------


class StackFolders:
    """The folders beside a stack's home that its copied config admits (both stacks' configs do)."""

    home: Path

    @property
    def sources(self) -> Path:
        """Where a trigger's `source` or batch `input` may point (the stack config's data_source.allowed_sources)."""
        return self.home.parent / "sources"

    @property
    def batch_outputs(self) -> Path:
        """Where a trigger's batch-prediction `output` may go (the stack config's batch.allowed_outputs)."""
        return self.home.parent / "batch-outputs"


@dataclass
class AirflowStack(StackFolders):
    home: Path
    outputs: Path
    env: dict[str, str]
    api_url: str
    mlflow_url: str
    serving_url: str
    client: AirflowClient
    timings: dict[str, float] = field(default_factory=lambda: AIRFLOW_TIMINGS)

    @property
    def artifacts_root(self) -> Path:
        return Path(self.env["MLOPS_ARTIFACTS_ROOT"])

    @property
    def tracking_uri(self) -> str:
        return self.env["MLOPS_TRACKING_URI"]

    def script(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_stack_script(command, self.env, timeout)

    def log_tails(self, lines: int = 30) -> str:
        return stack_log_tails(self.home, lines)


def airflow_stack(base: Path) -> AirflowStack:
    """The settings of an embedded stack living in `base` (not started). Its config dir is a copy of the default
    whose `data_source.allowed_sources` admits <base>/sources/ (the trigger form's `source` may point there),
    whose `batch.allowed_outputs` admits <base>/batch-outputs/ (ml_batch_predict's `output`) and whose tuning
    runs 4 trials (and evaluate explains a small sample: tests/support/project.small_leakage_budget)."""
    outputs = base / "outputs"
    api_port, mlflow_port, serving_port = free_ports(3)
    config_dir = base / "config"
    shutil.copytree(REPO / "include" / "config", config_dir)
    (base / "sources").mkdir()
    (base / "batch-outputs").mkdir()

    # No cron schedule: only the runs a test triggers, whatever the time of day, and the ml_pipeline runs the drift
    # Asset event of an ml_monitor run starts (tests/dag_runs/test_monitor.py).
    def allow(data: dict) -> None:
        data["data_source"]["allowed_sources"] = [f"{base / 'sources'}/"]
        data["batch"]["allowed_outputs"] = [f"{base / 'batch-outputs'}/"]
        data["airflow"].update(retrain_on="drift", monitor_schedule=None)

    edit_yaml(config_dir / "config.yaml", allow)
    # The tune task runs as configured, on a small budget: its search is tested in tests/ml/test_tuning.py.
    edit_yaml(config_dir / "params.yaml", lambda data: data["tuning"].update(n_trials=4))
    small_leakage_budget(config_dir)
    # Releases (strategy direct: only ml_release runs, tests/dag_runs/test_ml_release.py) bake for seconds, with the
    # shipped steps (the DAG's tasks), enough traffic for a test, and p99 room for a 2-core machine running the stack.
    edit_yaml(config_dir / "params.yaml", lambda data: data["release"].update(
        shadow={"sample": 1.0, "bake_seconds": 20}, canary=[{"percent": 10, "bake_seconds": 8},
                                                            {"percent": 50, "bake_seconds": 8}],
        poll_seconds=2, min_requests=20, health={"max_error_rate_increase": 0.01, "max_p99_ratio": 1.5,
                                                 "p99_slack_ms": 50},
        # test_ml_release's better candidate (a forest) agrees with its champion (an elasticnet) within 10 % on
        # 54-62 % of the pairs: near the regression default of 0.5, which is for a model that went wrong
        agreement={"min": 0.3, "tolerance": 0.1}))
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
        MLOPS_CONFIG_DIR=str(config_dir),
        # Capture files are closed (readable by the monitor) within seconds, not the default 5 minutes.
        SERVING_CAPTURE_ROTATE_SECONDS="2",
        # The killed-task test waits for a retry: 1 s instead of 30 s (then exponential backoff).
        MLOPS_RETRY_DELAY_SECONDS="1",
    )
    outputs.mkdir(parents=True)
    return AirflowStack(
        home=base / "home", outputs=outputs, env=env,
        api_url=f"http://127.0.0.1:{api_port}", mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        serving_url=f"http://127.0.0.1:{serving_port}",
        client=AirflowClient(f"http://127.0.0.1:{api_port}", "admin", env["AIRFLOW_STACK_ADMIN_PASSWORD"]),
    )


@contextmanager
def running_airflow_stack(base: Path) -> Iterator[AirflowStack]:
    """`scripts/airflow_stack.sh up` in `base`, then `down` on exit; the start-up and shutdown are timed."""
    stack = airflow_stack(base)
    started = time.monotonic()
    try:
        up = stack.script("up")
        if up.returncode != 0:
            pytest.fail(f"scripts/airflow_stack.sh up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                        f"{stack.log_tails()}", pytrace=False)
        AIRFLOW_TIMINGS["stack start-up (s)"] = time.monotonic() - started
        yield stack
    finally:
        stopping = time.monotonic()
        down = stack.script("down", timeout=120)
        AIRFLOW_TIMINGS["stack shutdown (s)"] = time.monotonic() - stopping
        if down.returncode != 0:
            print(f"scripts/airflow_stack.sh down failed:\n{down.stdout}\n{down.stderr}", file=sys.stderr)


# --- the production topology's services -------------------------------------------------------------------


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


@contextmanager
def fresh_postgres_databases() -> Iterator[dict[str, str]]:
    """Fresh databases, dropped on exit: {"airflow": "airflow_test_<token>", "mlflow": "mlflow_test_<token>",
    "tuning": "tuning_test_<token>"}."""
    host, port = _address(POSTGRES_DSN, 5432)
    if not _reachable((host, port)):
        unavailable(f"PostgreSQL is not reachable at {host}:{port} (TOPOLOGY_POSTGRES_DSN)")
    import psycopg2

    token = secrets.token_hex(4)
    names = {role: f"{role}_test_{token}" for role in ("airflow", "mlflow", "tuning")}
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


@contextmanager
def fresh_redis_broker() -> Iterator[RedisBroker]:
    """A Redis DB number and key prefix of this session's own; its keys are deleted on exit."""
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


def create_bucket(s3_endpoint: str) -> str:
    """A bucket of a random name on the moto server at `s3_endpoint`."""
    import boto3

    name = f"mlflow-topology-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


# --- the production topology's stack (CeleryExecutor) ----------------------------------------------------


@dataclass
class CeleryStack(StackFolders):
    home: Path
    outputs: Path
    env: dict[str, str]
    api_url: str
    mlflow_url: str
    databases: dict[str, str]  # role (airflow, mlflow, tuning) -> database name
    broker: RedisBroker
    s3_endpoint: str
    bucket: str
    client: AirflowClient
    workers: dict[str, str]  # component (worker-1) -> Celery node name, the hostname its tasks record
    timings: dict[str, float] = field(default_factory=lambda: CELERY_TIMINGS)

    @property
    def mlflow_login(self) -> tuple[str, str]:
        """The MLflow admin the stack's processes log in as (MLFLOW_TRACKING_USERNAME/PASSWORD)."""
        return self.env["AIRFLOW_STACK_MLFLOW_ADMIN_USER"], self.env["AIRFLOW_STACK_MLFLOW_ADMIN_PASSWORD"]

    @property
    def artifacts_root(self) -> Path:
        return Path(self.env["MLOPS_ARTIFACTS_ROOT"])

    def script(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_stack_script(command, self.env, timeout)

    def worker_pid(self, component: str) -> int:
        return int((self.home / "stack" / f"{component}.pid").read_text().split()[0])

    def log_tails(self, lines: int = 30) -> str:
        return stack_log_tails(self.home, lines)


def celery_env(base: Path, databases: dict[str, str], broker: RedisBroker, s3_endpoint: str, bucket: str,
               api_port: int, mlflow_port: int) -> dict[str, str]:
    outputs = base / "outputs"
    # A copy of the default config whose data_source.allowed_sources admits <base>/sources/ and whose
    # batch.allowed_outputs admits <base>/batch-outputs/ (ml_batch_predict's trigger form, tests/topology/
    # test_celery_batch.py); the model store and signing keys of batch prediction's export are the stack's own.
    # No cron schedule: only the runs a test triggers (unpausing ml_pipeline would otherwise start the last
    # interval's nightly run, tuning and all, ahead of them: max_active_runs is 1).
    config_dir = base / "config"
    shutil.copytree(REPO / "include" / "config", config_dir)
    for folder in ("sources", "batch-outputs"):
        (base / folder).mkdir()
    edit_yaml(config_dir / "config.yaml", lambda data: (
        data["data_source"].update(allowed_sources=[f"{base / 'sources'}/"]),
        data["batch"].update(allowed_outputs=[f"{base / 'batch-outputs'}/"]),
        data["airflow"].update(schedule=None, monitor_schedule=None)))
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
        # The production logins: FAB for Airflow; MLflow's basic-auth app (on by the backend URI) with this admin.
        AIRFLOW_STACK_AUTH="fab",
        AIRFLOW_STACK_MLFLOW_ADMIN_USER="pipeline",
        AIRFLOW_STACK_MLFLOW_ADMIN_PASSWORD=secrets.token_urlsafe(18),
        AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=broker.prefix,
        MLOPS_ARTIFACTS_ROOT=str(outputs / "artifacts"),
        # The tune stage's shared Optuna study: what both workers' tune_worker tasks run trials against.
        MLOPS_TUNING_STORAGE=pg_url(databases["tuning"], "psycopg2"),
        MLOPS_ARTIFACT_LOCATION=f"s3://{bucket}/mlflow",
        MLOPS_CONFIG_DIR=str(config_dir),
        MLOPS_MODEL_STORE=str(outputs / "models"),
        MLOPS_SIGNING_KEY=str(outputs / "keys" / "bundle-signing.key"),
        MLOPS_SIGNING_PUBLIC_KEY=str(outputs / "keys" / "bundle-signing.pub"),
        # No deployment and no prediction server: the topology under test ends at the registry (and the
        # project's models/ stays untouched).
        MLOPS_DEPLOY_TARGET="none",
        AIRFLOW_STACK_SERVING="0",
        AWS_ENDPOINT_URL_S3=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # Capture files are closed (readable by the monitor) within seconds, not the default 5 minutes.
        SERVING_CAPTURE_ROTATE_SECONDS="2",
        # A killed worker's task is noticed (no heartbeat) after 20 s, not 5 min, and retried after ~1 s.
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
        MLOPS_RETRY_DELAY_SECONDS="1",
    )
    outputs.mkdir(parents=True)
    return env


@contextmanager
def running_celery_stack(base: Path, databases: dict[str, str], broker: RedisBroker, s3_endpoint: str,
                         bucket: str) -> Iterator[CeleryStack]:
    """`scripts/airflow_stack.sh up` in celery mode on these services, then `down` on exit."""
    if shutil.which("ps") is None:
        unavailable("`ps` (procps) is needed by scripts/airflow_stack.sh down")
    api_port, mlflow_port = free_ports(2)
    env = celery_env(base, databases, broker, s3_endpoint, bucket, api_port, mlflow_port)
    host = os.environ.get("HOSTNAME") or subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    stack = CeleryStack(
        home=base / "home", outputs=base / "outputs", env=env,
        api_url=f"http://127.0.0.1:{api_port}", mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        databases=databases, broker=broker, s3_endpoint=s3_endpoint, bucket=bucket,
        client=AirflowClient(f"http://127.0.0.1:{api_port}", "admin", env["AIRFLOW_STACK_ADMIN_PASSWORD"]),
        workers={f"worker-{n}": f"worker-{n}@{host}" for n in range(1, WORKERS + 1)},
    )
    started = time.monotonic()
    try:
        up = stack.script("up")
        if up.returncode != 0:
            pytest.fail(f"airflow_stack.sh up (celery) failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                        f"{stack.log_tails()}", pytrace=False)
        CELERY_TIMINGS["celery stack start-up (s)"] = time.monotonic() - started
        log.info("celery stack up: %s", up.stdout)
        yield stack
    finally:
        stopping = time.monotonic()
        down = stack.script("down", timeout=180)
        CELERY_TIMINGS["celery stack shutdown (s)"] = time.monotonic() - stopping
        if down.returncode != 0:
            print(f"airflow_stack.sh down failed:\n{down.stdout}\n{down.stderr}", file=sys.stderr)
