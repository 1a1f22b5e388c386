"""docker-compose.yaml, .env.example and the Dockerfiles, checked against the project's settings.

The compose file is resolved by a real compose implementation (Debian's docker-compose answers
`config` without a Docker engine; `make test` installs it), then each service's command,
environment, mounts and dependencies are compared with what the code reads: the pipeline's
ConfigurationManager, the prediction server's Settings, MLflow's host check, and the settings the
native Celery stack (scripts/airflow_stack.sh) gives its processes.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.project import REPO
from tests.support.stacks import STACK_SCRIPT, unavailable

pytestmark = pytest.mark.integration  # docker-compose and scripts/airflow_stack.sh run in child processes

log = logging.getLogger(__name__)

COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET",
           "AIRFLOW_API_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY")
OPTIONAL_SECRETS = ("SERVING_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker")
LONG_RUNNING = ("postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "airflow-worker", "mlflow", "prediction-server", "prediction-front")
SERVING_COMMAND = ["gunicorn", "-c", "serving/gunicorn.conf.py", "serving.app:create_app()"]
MODEL_STORE = "/opt/mlops/models"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


# --- running docker-compose ------------------------------------------------------------------------


def compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        unavailable("docker-compose is not installed (`make test` installs Debian's docker-compose)")
    return binary


def run_compose(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """docker-compose with only `env` (no caller's variables), reading .env.example as its .env file."""
    command = [compose_binary(), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE),
               "--env-file", str(ENV_EXAMPLE), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def base_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}


@pytest.fixture(scope="module")
def secret_values() -> dict[str, str]:
    return {name: secrets.token_urlsafe(16) for name in SECRETS}


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory, secret_values: dict[str, str]) -> dict[str, Any]:
    """The resolved compose file (`docker-compose config`) with .env.example plus the required secrets."""
    result = run_compose({**base_env(tmp_path_factory.mktemp("compose")), **secret_values}, "config")
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    assert "WARNING" not in result.stderr, result.stderr  # e.g. an unset variable defaulting to ""
    return yaml.safe_load(result.stdout)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(compose: dict[str, Any], service: str) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in services(compose)[service].get("environment", {}).items()}


def mounts(compose: dict[str, Any], service: str) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) for a service's volumes, as docker-compose config prints them."""
    found = {}
    for volume in services(compose)[service].get("volumes", []):
        source, target, *mode = volume.split(":") if isinstance(volume, str) else (
            volume["source"], volume["target"], "ro" if volume.get("read_only") else "rw")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def option(command: list[str], name: str) -> str:
    """The value after `name` in a command line."""
    assert name in command, f"{name} not in {command}"
    return command[command.index(name) + 1]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# --- the file and its variables -----------------------------------------------------------------------


def test_env_example_lists_every_variable_and_holds_no_secret() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    listed = env_example()
    assert sorted(used - set(listed)) == [], "variables the compose file uses but .env.example does not list"
    assert sorted(set(listed) - used) == [], ".env.example lists variables the compose file never uses"
    for name in (*SECRETS, *OPTIONAL_SECRETS):
        assert listed[name] == "", f".env.example must not carry a value for the secret {name}"
    # Without a .env, compose falls back to its defaults: they are the values .env.example documents.
    for name, default in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", COMPOSE_FILE.read_text()):
        assert listed[name] == default, f"{name}: compose defaults to {default!r}, .env.example says {listed[name]!r}"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env (the filled-in copy holding the secrets) must be git-ignored"
    assert ".env" in (REPO / ".dockerignore").read_text().split(), ".env must stay out of the image build context"


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_run_without_each_secret(tmp_path: Path, secret_values: dict[str, str],
                                                    missing: str) -> None:
    """No secret has a default: with one left empty, as in .env.example, compose stops and names it."""
    others = {name: value for name, value in secret_values.items() if name != missing}
    result = run_compose({**base_env(tmp_path), **others}, "config", "-q")
    assert result.returncode != 0, f"compose accepted an empty {missing}"
    assert f"set {missing} in .env" in result.stderr, result.stderr


def test_services_and_commands(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {"postgres", "redis", "mlflow", "prediction-server", "prediction-front",
                                      *AIRFLOW_SERVICES}
    commands = {name: service.get("command") for name, service in services(compose).items()}
    assert commands["mlflow"][:2] == ["mlflow", "server"] and option(commands["mlflow"], "--app-name") == "basic-auth"
    assert commands["airflow-apiserver"] == ["airflow", "api-server", "--port", "8080"]
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    assert commands["airflow-worker"] == ["airflow", "celery", "worker"]
    assert commands["airflow-init"][:2] == ["bash", "-c"] and "airflow db migrate" in commands["airflow-init"][2]
    assert commands["mlflow"][:2] == ["mlflow", "server"] and option(commands["mlflow"], "--host") == "0.0.0.0"
    assert commands["prediction-server"] == SERVING_COMMAND
    for name in (*AIRFLOW_SERVICES, "mlflow"):
        assert services(compose)[name]["build"]["dockerfile"] == "docker/airflow/Dockerfile", name
    assert services(compose)["prediction-server"]["build"]["dockerfile"] == "docker/serving/Dockerfile"


def test_the_prediction_server_captures_where_the_monitor_reads(compose: dict[str, Any]) -> None:
    """Capture (serving/capture.py) is on in the server, into a volume every Airflow service reads from
    monitoring.capture_dir (MLOPS_CAPTURE_DIR); only the server writes it."""
    serving = env_of(compose, "prediction-server")
    assert serving["SERVING_CAPTURE_DIR"] == "/opt/mlops/capture" and serving["SERVING_CAPTURE_SAMPLE"] == "1.0"
    volume = mounts(compose, "prediction-server")["/opt/mlops/capture"]
    assert volume[1] == "rw"
    for name in AIRFLOW_SERVICES:
        assert env_of(compose, name)["MLOPS_CAPTURE_DIR"] == "/opt/mlops/capture", name
        assert mounts(compose, name)["/opt/mlops/capture"] == (volume[0], "ro"), name
    dockerfile = (REPO / "docker" / "serving" / "Dockerfile").read_text()
    assert "/opt/mlops/capture" in dockerfile  # the volume starts owned by the server's user, as the image has it


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name in LONG_RUNNING:
        assert svc[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert svc[name].get("restart") == "always", f"{name} is not restarted"
    assert svc["airflow-init"].get("restart") == "no" and "healthcheck" not in svc["airflow-init"]
    # Whatever waits for a service's health must be waiting on a service that has a health check.
    for name, service in svc.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in svc[dependency], f"{name} waits for {dependency}'s health, which has no check"
    ready = {"postgres": "service_healthy", "redis": "service_healthy",
             "airflow-init": "service_completed_successfully"}
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert {k: v["condition"] for k, v in svc[name]["depends_on"].items()} == ready, name
    # Workers run task processes that call the api-server's Execution API and log to MLflow.
    worker = {k: v["condition"] for k, v in svc["airflow-worker"]["depends_on"].items()}
    assert worker == {**ready, "airflow-apiserver": "service_healthy", "mlflow": "service_healthy"}
    assert {k: v["condition"] for k, v in svc["airflow-init"]["depends_on"].items()} == {"postgres": "service_healthy"}
    assert {k: v["condition"] for k, v in svc["mlflow"]["depends_on"].items()} == {"postgres": "service_healthy"}
    # The health checks ask the ports the services listen on.
    assert "http://localhost:8080/" in " ".join(svc["airflow-apiserver"]["healthcheck"]["test"])
    assert env_of(compose, "airflow-scheduler")["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    assert "http://localhost:8974/health" in svc["airflow-scheduler"]["healthcheck"]["test"]
    port = option(svc["mlflow"]["command"], "--port")
    assert f"http://localhost:{port}/health" in svc["mlflow"]["healthcheck"]["test"]


def test_workers_scale_and_ports_stay_on_loopback(compose: dict[str, Any]) -> None:
    worker = services(compose)["airflow-worker"]
    # `--scale airflow-worker=N` needs containers that differ only in name: no fixed name, no host port.
    assert "container_name" not in worker and "ports" not in worker
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback by default"


# --- one configuration for every Airflow component ------------------------------------------------------


def test_airflow_services_share_one_configuration(compose: dict[str, Any], secret_values: dict[str, str]) -> None:
    shared = {name: {k: v for k, v in env_of(compose, name).items() if k.startswith(("AIRFLOW__", "MLOPS_", "AWS_"))}
              for name in AIRFLOW_SERVICES}
    reference = shared["airflow-apiserver"]
    for name, env in shared.items():
        assert env == reference, f"{name}'s Airflow/pipeline settings differ from the api-server's"

    assert reference["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Secrets come from .env, the same in every component (workers' Execution API tokens are signed
    # by the scheduler and checked by the api-server with the JWT secret).
    assert reference["AIRFLOW__API_AUTH__JWT_SECRET"] == secret_values["AIRFLOW_JWT_SECRET"]
    assert reference["AIRFLOW__API__SECRET_KEY"] == secret_values["AIRFLOW_API_SECRET_KEY"]
    assert reference["AIRFLOW__CORE__FERNET_KEY"] == secret_values["AIRFLOW_FERNET_KEY"]

    # The metadata DB is the postgres service's database, as its own user.
    postgres = env_of(compose, "postgres")
    conn = urlsplit(reference["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (conn.scheme, conn.hostname, conn.port, conn.path) == (
        "postgresql+psycopg2", "postgres", 5432, f"/{postgres['POSTGRES_DB']}")
    assert (conn.username, conn.password) == (postgres["POSTGRES_USER"], secret_values["POSTGRES_PASSWORD"])
    # Celery's results: none configured, so Airflow keeps them in the metadata DB (checked live in
    # test_celery_topology).
    assert "AIRFLOW__CELERY__RESULT_BACKEND" not in reference
    broker = urlsplit(reference["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)

    # Task processes reach the Execution API on the api-server service's port.
    execution = urlsplit(reference["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    api_port = option(services(compose)["airflow-apiserver"]["command"], "--port")
    assert (execution.hostname, str(execution.port), execution.path) == ("airflow-apiserver", api_port, "/execution/")

    # Login: the FAB auth manager (checked below), the same in every component.
    assert reference["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER


def test_code_is_mounted_read_only(compose: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        found = mounts(compose, name)
        for folder in ("dags", "plugins", "include"):
            assert found.get(f"/opt/airflow/{folder}") == (str(REPO / folder), "ro"), f"{name}: {folder}/"
        env = env_of(compose, name)
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/airflow/plugins"


def test_same_settings_as_the_native_celery_stack(compose: dict[str, Any], tmp_path: Path) -> None:
    """What scripts/airflow_stack.sh gives its processes in celery mode, the compose file gives its containers.

    Only where each topology listens differs: the native api-server binds a host and port by setting,
    the container one is given --port and listens on every interface.
    """
    native = native_stack_env({
        **base_env(tmp_path), "AIRFLOW_STACK_HOME": str(tmp_path / "home"), "AIRFLOW_STACK_VENV": sys.prefix,
        "AIRFLOW_STACK_EXECUTOR": "celery", "AIRFLOW_STACK_SQL_CONN": "postgresql+psycopg2://u@db:5432/airflow",
        "AIRFLOW_STACK_BROKER_URL": "redis://broker:6379/0",
        "AIRFLOW_STACK_MLFLOW_BACKEND_URI": "postgresql+psycopg2://u@db:5432/mlflow", "AIRFLOW_STACK_AUTH": "fab",
    })
    containers = env_of(compose, "airflow-worker")
    listening = {"AIRFLOW__API__HOST", "AIRFLOW__API__PORT"}
    native_keys = {k for k in native if k.startswith("AIRFLOW__")} - listening
    assert sorted(native_keys - set(containers)) == [], "settings the native stack has and the containers lack"
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__AUTH_MANAGER"):
        assert containers[key] == native[key], key
    # Both send the tasks' MLflow calls to the tracking server, never to its database, and log in to it.
    assert native["MLOPS_TRACKING_URI"].startswith("http://")
    assert containers["MLOPS_TRACKING_URI"].startswith("http://")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert native[key] and containers[key], key


def native_stack_env(env: dict[str, str]) -> dict[str, str]:
    """The environment `scripts/airflow_stack.sh env` sets up for these settings."""
    lines = subprocess.run(["bash", str(STACK_SCRIPT), "env"], env=env, capture_output=True, text=True, timeout=60)
    assert lines.returncode == 0, lines.stderr
    dumped = subprocess.run(["bash", "-c", lines.stdout + "\nenv -0"], env=env, capture_output=True, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    return dict(item.split("=", 1) for item in dumped.stdout.decode().split("\0") if "=" in item)


# --- logins -------------------------------------------------------------------------------------------------


def test_airflow_login_is_the_fab_auth_manager_with_the_admin_from_env(compose: dict[str, Any],
                                                                      secret_values: dict[str, str]) -> None:
    """Not the SimpleAuthManager (development only): FAB, whose admin airflow-init makes from .env."""
    from scripts.stack_settings import AUTH_MANAGERS, FAB_ADMIN_SCRIPT

    assert AUTH_MANAGERS["fab"] == FAB_AUTH_MANAGER
    for name in AIRFLOW_SERVICES:
        env = env_of(compose, name)
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER, name
        assert not [key for key in env if "SIMPLE_AUTH_MANAGER" in key], name
    init = env_of(compose, "airflow-init")
    assert init["AIRFLOW_ADMIN_USER"] == env_example()["AIRFLOW_ADMIN_USER"]
    assert init["AIRFLOW_ADMIN_PASSWORD"] == secret_values["AIRFLOW_ADMIN_PASSWORD"]
    # Only the init needs the admin's password; the running services check logins against the metadata DB.
    for name in set(services(compose)) - {"airflow-init"}:
        assert secret_values["AIRFLOW_ADMIN_PASSWORD"] not in str(services(compose)[name]), name
    # It migrates (FAB's tables too), then runs the native stack's admin script, which tests/topology runs live.
    script = services(compose)["airflow-init"]["command"][2]
    assert script.index("airflow db migrate") < script.index(FAB_ADMIN_SCRIPT)
    assert "AIRFLOW_ADMIN_PASSWORD" not in script.replace(FAB_ADMIN_SCRIPT, ""), "the password must stay off argv"
    assert "apache-airflow-providers-fab==" in (REPO / "requirements.txt").read_text()


def test_mlflow_runs_basic_auth_with_the_admin_from_env(compose: dict[str, Any], secret_values: dict[str, str],
                                                       tmp_path: Path) -> None:
    mlflow = services(compose)["mlflow"]
    env = env_of(compose, "mlflow")
    assert option(mlflow["command"], "--app-name") == "basic-auth"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == env_example()["MLFLOW_ADMIN_USER"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == secret_values["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == secret_values["MLFLOW_SECRET_KEY"]
    # The entrypoint writes the app's config, naming its user store: a database of its own on postgres.
    entrypoint = mlflow["entrypoint"]
    assert entrypoint[:3] == ["/usr/bin/tini", "--", "bash"]
    source, mode = mounts(compose, "mlflow")[entrypoint[3]]
    assert mode == "ro" and Path(source) == REPO / "docker" / "mlflow" / "basic-auth-entrypoint.sh"
    store = urlsplit(env["MLFLOW_AUTH_DATABASE_URI"])
    postgres = env_of(compose, "postgres")
    assert (store.scheme, store.hostname, store.path) == ("postgresql+psycopg2", "postgres",
                                                          f"/{postgres['MLFLOW_AUTH_DB_NAME']}")
    assert store.path not in (f"/{postgres['POSTGRES_DB']}", f"/{postgres['MLFLOW_DB_NAME']}")
    assert "MLFLOW_AUTH_DB_NAME" in (REPO / "docker" / "postgres" / "create-mlflow-db.sh").read_text()

    # Run the entrypoint as the container would (its command: print the environment): MLflow reads the config it
    # wrote, with the user store's URL intact (a % in the password included), and the command runs.
    config = tmp_path / "auth" / "basic_auth.ini"
    database = env["MLFLOW_AUTH_DATABASE_URI"].replace(secret_values["POSTGRES_PASSWORD"], "p%40ss%word")
    ran = subprocess.run(["bash", source, "env"], capture_output=True, text=True, timeout=60, env={
        **base_env(tmp_path), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_DATABASE_URI": database,
        "MLFLOW_AUTH_ADMIN_USERNAME": env["MLFLOW_AUTH_ADMIN_USERNAME"], "MLFLOW_REGISTRY_WRITERS": "ci-bot, ops"})
    assert ran.returncode == 0, ran.stderr
    assert "MLFLOW_AUTH_DATABASE_URI" not in ran.stdout, "the URL (with its password) must not reach the server"
    assert config.stat().st_mode & 0o077 == 0, "the config holds the database password: private to its owner"
    read = subprocess.run([sys.executable, "-c", "from mlflow.server.auth.config import read_auth_config as r; "
                           "from scripts.mlflow_auth import registry_writers as w; "
                           "c = r(); print(c.database_uri); print(c.default_permission); "
                           "print(c.authorization_function); print(*sorted(w()))"],
                          env={**base_env(tmp_path), "MLFLOW_AUTH_CONFIG_PATH": str(config), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    # Nothing without a grant; registry writes by the admin (the workers' login) and MLFLOW_REGISTRY_WRITERS only
    # (tests/ops/test_mlflow_registry.py).
    assert read.stdout.split() == [database, "NO_PERMISSIONS", "scripts.mlflow_auth:authenticate_request",
                                   "admin", "ci-bot", "ops"]
    # The check is in the container: the image copies scripts/ under /opt/airflow (its PYTHONPATH), and compose
    # mounts the current file over it.
    assert mounts(compose, "mlflow")["/opt/airflow/scripts/mlflow_auth.py"] == (
        str(REPO / "scripts" / "mlflow_auth.py"), "ro")
    assert env["MLFLOW_REGISTRY_WRITERS"] == ""


def test_mlflow_is_reachable_on_loopback_only(tmp_path: Path, secret_values: dict[str, str]) -> None:
    """Even with PUBLISH_HOST=0.0.0.0 (the Airflow UI and the prediction server for the network), MLflow's port is
    published on 127.0.0.1 only: basic auth over plain HTTP does not leave the machine."""
    result = run_compose({**base_env(tmp_path), **secret_values, "PUBLISH_HOST": "0.0.0.0"}, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    published = [port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}"
                 for port in resolved["mlflow"]["ports"]]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    assert resolved["airflow-apiserver"]["ports"] != resolved["mlflow"]["ports"]  # PUBLISH_HOST did reach others
    for name, service in resolved.items():
        assert service.get("network_mode") != "host", f"{name} would bypass the published ports"


def test_workers_log_in_to_mlflow_with_the_admin_from_env(compose: dict[str, Any],
                                                         secret_values: dict[str, str]) -> None:
    mlflow = env_of(compose, "mlflow")
    for name in AIRFLOW_SERVICES:  # the workers' tasks, and `python main.py ...` in any Airflow container
        env = env_of(compose, name)
        assert env["MLFLOW_TRACKING_USERNAME"] == mlflow["MLFLOW_AUTH_ADMIN_USERNAME"], name
        assert env["MLFLOW_TRACKING_PASSWORD"] == mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == \
            secret_values["MLFLOW_ADMIN_PASSWORD"], name


# --- MLflow and the pipeline ------------------------------------------------------------------------------


def test_pipeline_settings_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    from include.ml.configuration import ConfigurationManager

    worker_env = env_of(compose, "airflow-worker")
    config = ConfigurationManager(env=worker_env).config
    mlflow_env = env_of(compose, "mlflow")
    mlflow_port = option(services(compose)["mlflow"]["command"], "--port")

    # Tasks log to the mlflow service, and it answers their Host header (it refuses unknown hosts).
    tracking = urlsplit(config.mlflow.tracking_uri)
    assert (tracking.scheme, tracking.hostname, str(tracking.port)) == ("http", "mlflow", mlflow_port)
    allowed = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert is_allowed_host_header(allowed, tracking.netloc)
    assert is_allowed_host_header(allowed, "localhost:5000") and not is_allowed_host_header(allowed, "evil.example")

    # New experiments store artifacts where the server's default root is, on a volume both mount there.
    root = mlflow_env["MLFLOW_DEFAULT_ARTIFACT_ROOT"]
    assert config.mlflow.artifact_location == Path(root).as_uri()
    assert mounts(compose, "mlflow")[root][0] == mounts(compose, "airflow-worker")[root][0]

    # The tracking store is the postgres service's second database, which its init script creates.
    store = urlsplit(mlflow_env["MLFLOW_BACKEND_STORE_URI"])
    postgres = env_of(compose, "postgres")
    assert (store.scheme, store.hostname, store.path) == ("postgresql+psycopg2", "postgres",
                                                          f"/{postgres['MLFLOW_DB_NAME']}")
    assert store.path != f"/{postgres['POSTGRES_DB']}", "MLflow and Airflow must not share a database"
    init = mounts(compose, "postgres")["/docker-entrypoint-initdb.d/create-mlflow-db.sh"]
    script = Path(init[0])
    assert init[1] == "ro" and script.is_file() and "MLFLOW_DB_NAME" in script.read_text()
    assert script.stat().st_mode & 0o111, "the postgres image runs only executable init scripts as programs"

    # Stage outputs pass between tasks as files: every worker container sees one artifacts root.
    assert str(config.artifacts_root) == "/opt/mlops/artifacts"
    source, mode = mounts(compose, "airflow-worker")[str(config.artifacts_root)]
    assert mode == "rw" and source in compose["volumes"], "the artifacts root must be a named, shared volume"
    # The api-server serves the Data Docs out of the same root (plugins/mlops_links.py).
    assert mounts(compose, "airflow-apiserver")[str(config.artifacts_root)][0] == source


def test_prediction_server_follows_the_serving_contract(compose: dict[str, Any]) -> None:
    from serving.settings import Settings

    server = services(compose)["prediction-server"]
    env = env_of(compose, "prediction-server")
    settings = Settings.from_env(env)  # the server's own parsing accepts every value
    assert settings.model_store == Path(MODEL_STORE) and settings.api_key is None  # empty = no key
    host, port = env["SERVING_BIND"].rsplit(":", 1)
    assert host == "0.0.0.0", "in a container the server must listen beyond its own loopback"
    assert "ports" not in server, "clients reach gunicorn through prediction-front (nginx), never directly"
    assert f"http://127.0.0.1:{port}/health" in " ".join(server["healthcheck"]["test"])
    assert (REPO / "serving" / "gunicorn.conf.py").is_file()
    # It reads the store the workers deploy models into: the same volume, read-only on its side.
    served = mounts(compose, "prediction-server")[MODEL_STORE]
    deployed = mounts(compose, "airflow-worker")[MODEL_STORE]
    assert served[0] == deployed[0] and served[0] in compose["volumes"]
    assert (served[1], deployed[1]) == ("ro", "rw")
    assert env_of(compose, "airflow-worker")["MLOPS_MODEL_STORE"] == MODEL_STORE  # and `python main.py export`


def test_the_prediction_server_is_published_through_nginx_with_the_ec2_site(compose: dict[str, Any]) -> None:
    """prediction-front publishes the serving port and renders the EC2 host's nginx site with user-data.sh's own
    function (tests/deploy/test_nginx_front.py runs that command in front of a real gunicorn, under slowloris)."""
    front = services(compose)["prediction-front"]
    found = mounts(compose, "prediction-front")
    deploy = REPO / "serving" / "deploy"
    assert found == {"/opt/mlops/deploy/nginx-prediction-server.conf": (str(deploy / "nginx-prediction-server.conf"),
                                                                      "ro"),
                     "/opt/mlops/deploy/user-data.sh": (str(deploy / "user-data.sh"), "ro")}
    server_port = env_of(compose, "prediction-server")["SERVING_BIND"].rsplit(":", 1)[1]
    script = front["command"][2]
    assert f"render_nginx_site /opt/mlops/deploy/nginx-prediction-server.conf /etc/nginx/conf.d/default.conf 8000 " \
           f"prediction-server:{server_port}" in script
    assert [p.rsplit(":", 1)[1].split("/")[0] for p in front["ports"]] == ["8000"]
    assert front["depends_on"] == {"prediction-server": {"condition": "service_healthy"}}
    assert "/dev/tcp/127.0.0.1/8000" in front["healthcheck"]["test"][-1] and "GET /health " in \
        front["healthcheck"]["test"][-1]


def test_deploy_task_reaches_the_prediction_server(compose: dict[str, Any]) -> None:
    """The DAG's deploy task (target local) writes the store this server reads and asks this server to switch."""
    from include.ml.configuration import ConfigurationManager

    worker_env = env_of(compose, "airflow-worker")
    deployment = ConfigurationManager(env=worker_env).config.deployment
    server = env_of(compose, "prediction-server")
    assert deployment.target == "local"
    assert str(deployment.local.model_store) == server["SERVING_MODEL_STORE"] == MODEL_STORE
    url = urlsplit(deployment.local.server_url)
    assert (url.hostname, str(url.port)) == ("prediction-server", server["SERVING_BIND"].rsplit(":", 1)[1])
    # The deployer sends the server's API key when it has one.
    assert worker_env["MLOPS_SERVING_API_KEY"] == server["SERVING_API_KEY"]


def test_workers_sign_and_the_server_trusts_only_their_key(compose: dict[str, Any]) -> None:
    """The pipeline signs with the private key (or KMS); the server gets the public half and nothing else."""
    from include.ml.configuration import ConfigurationManager

    worker_env = env_of(compose, "airflow-worker")
    signing = ConfigurationManager(env=worker_env).config.signing
    server = services(compose)["prediction-server"]
    assert str(signing.private_key) == "/run/secrets/bundle_signing_key"
    assert str(signing.public_key) == env_of(compose, "prediction-server")["SERVING_PUBLIC_KEY"] \
        == "/run/secrets/bundle_signing_public_key"
    assert [s["source"] if isinstance(s, dict) else s for s in server["secrets"]] == ["bundle_signing_public_key"]
    # The private key only where tasks sign (deploy, export: the Celery workers); no other container holds it.
    def secrets_of(name: str) -> list[str]:
        return [s["source"] if isinstance(s, dict) else s for s in services(compose)[name].get("secrets", [])]

    assert {name for name in services(compose) if "bundle_signing_key" in secrets_of(name)} == {"airflow-worker"}
    assert sorted(secrets_of("airflow-worker")) == ["bundle_signing_key", "bundle_signing_public_key"]
    for name in set(AIRFLOW_SERVICES) - {"airflow-worker"}:
        assert secrets_of(name) == ["bundle_signing_public_key"], name
    assert compose["secrets"]["bundle_signing_key"]["file"].endswith("keys/bundle-signing.key")


# --- Dockerfiles ------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("dockerfile", ["docker/airflow/Dockerfile", "docker/serving/Dockerfile"])
def test_dockerfiles_install_the_pinned_requirements(dockerfile: str) -> None:
    steps = dockerfile_instructions(REPO / dockerfile)
    python = re.search(r'requires-python = "==(\d+\.\d+)\.\*"', (REPO / "pyproject.toml").read_text()).group(1)
    assert steps[0] == ("FROM", f"python:{python}-slim-bookworm"), "the image's Python is the project's"
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "pip install --no-deps -r /tmp/requirements.txt" in runs and "pip check" in runs
    copies = [args.split() for op, args in steps if op == "COPY"]
    # /tmp/requirements.txt is one of the project's fully pinned files.
    pinned = next(args[0] for args in copies if args[-1] == "/tmp/requirements.txt")
    assert pinned in ("requirements.txt", "serving/requirements.txt")
    # One requirement a line (continuation lines joined), each an exact pin; --hash options (pip's hash-checking
    # mode, which a file with hashes turns on by itself) may follow.
    text = re.sub(r"\\\n", " ", (REPO / pinned).read_text())
    lines = [re.sub(r"\s+--hash=sha256:[0-9a-f]{64}", "", line).strip() for line in text.splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\[\],-]+==[A-Za-z0-9_.+-]+", line) for line in lines), pinned
    ignored = (REPO / ".dockerignore").read_text().split()
    for args in copies:
        for source in [a for a in args[:-1] if not a.startswith("--")]:
            assert (REPO / source).exists(), f"{dockerfile} copies {source}, which does not exist"
            assert source.rstrip("/") not in ignored, f"{dockerfile} copies {source}, which .dockerignore drops"
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    for excluded in (".env", ".venv", ".git"):
        assert excluded in ignored


def test_serving_image_runs_the_compose_command(compose: dict[str, Any]) -> None:
    steps = dict(dockerfile_instructions(REPO / "docker" / "serving" / "Dockerfile"))
    assert yaml.safe_load(steps["CMD"]) == SERVING_COMMAND == services(compose)["prediction-server"]["command"]
    env = steps["ENV"]
    assert "SERVING_BIND=0.0.0.0:8000" in env and f"SERVING_MODEL_STORE={MODEL_STORE}" in env
