"""The local stack's parts (scripts/stack*.py): settings, secrets and login files, the components' environment,
pid bookkeeping (process trees of real processes: test_stack_processes.py).

No stack is started here (the fast tier); tests/dag_runs and tests/topology start real stacks through
scripts/airflow_stack.sh, which exercise launching, health checks and stopping.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from scripts.stack import main
from scripts.stack_processes import kill, lock, recorded_pid, start_time, wait_groups
from scripts.stack_settings import (
    AUTH_MANAGERS,
    FAB_ADMIN_SCRIPT,
    REPO,
    Settings,
    StackError,
    capture_dir,
    ensure_password,
    env_lines,
    mlflow_auth_env,
    mlflow_login,
    pipeline_settings,
    prepare,
    redacted,
    stack_env,
    stack_secrets,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the stack runs on Linux (process groups, flock)")

CELERY = {"AIRFLOW_STACK_EXECUTOR": "celery", "AIRFLOW_STACK_BROKER_URL": "redis://127.0.0.1:6379/0",
          "AIRFLOW_STACK_SQL_CONN": "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow"}


def test_defaults_match_the_documented_ones() -> None:
    s = Settings.from_env({"AIRFLOW_STACK_API_PORT": ""})  # empty counts as unset, as with ${VAR:-default}
    assert (s.home, s.venv, s.dags_folder, s.plugins_folder) == (
        REPO / "airflow_home", REPO / ".venv", REPO / "dags", REPO / "plugins")
    assert (s.api_url, s.mlflow_url, s.serving_url) == (
        "http://127.0.0.1:8080", "http://127.0.0.1:5000", "http://127.0.0.1:8000")
    assert (s.timeout, s.stop_timeout, s.admin_user, s.admin_password) == (180, 20, "admin", "")
    assert s.sql_conn == f"sqlite:///{REPO}/airflow_home/airflow.db" and s.queues == "default"
    # The embedded default: the development-only SimpleAuthManager, and an MLflow UI without a login.
    assert s.auth == "simple" and s.passwords_file == REPO / "airflow_home" / "simple_auth_manager_passwords.json"
    assert not s.mlflow_auth
    assert s.components() == ["api-server", "scheduler", "dag-processor", "triggerer", "mlflow", "serving"]


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({**CELERY, "AIRFLOW_STACK_HOME": "home", "AIRFLOW_STACK_WORKERS": "3",
                           "AIRFLOW_STACK_MLFLOW": "0", "AIRFLOW_STACK_SERVING": "no", "AIRFLOW_STACK_TIMEOUT": "2.5",
                           "AIRFLOW_STACK_API_PORT": "18080", "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "ml"})
    assert s.home == tmp_path / "home" and s.timeout == 2.5 and s.api_url == "http://127.0.0.1:18080"
    assert s.components() == ["api-server", "scheduler", "dag-processor", "triggerer",
                              "worker-1", "worker-2", "worker-3"]
    assert s.queues == "ml" and Settings.from_env({**CELERY, "AIRFLOW_STACK_QUEUES": "a,b"}).queues == "a,b"
    # The worker count matters to celery only: anything goes with the LocalExecutor.
    assert "worker-1" not in Settings.from_env({"AIRFLOW_STACK_WORKERS": "many"}).components()


@pytest.mark.parametrize(("env", "message"), [
    ({"AIRFLOW_STACK_EXECUTOR": "kubernetes"}, "AIRFLOW_STACK_EXECUTOR must be local or celery, not 'kubernetes'"),
    ({**CELERY, "AIRFLOW_STACK_BROKER_URL": ""}, "AIRFLOW_STACK_EXECUTOR=celery needs AIRFLOW_STACK_BROKER_URL"),
    ({**CELERY, "AIRFLOW_STACK_SQL_CONN": ""}, "the CeleryExecutor cannot use SQLite; set AIRFLOW_STACK_SQL_CONN"),
    ({**CELERY, "AIRFLOW_STACK_WORKERS": "0"}, "AIRFLOW_STACK_WORKERS must be a positive integer, not '0'"),
    ({"AIRFLOW_STACK_API_PORT": "http"}, "AIRFLOW_STACK_API_PORT must be a number, not 'http'"),
    ({"AIRFLOW_STACK_AUTH": "ldap"}, "AIRFLOW_STACK_AUTH must be simple or fab, not 'ldap'"),
])
def test_invalid_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(StackError, match=message):
        Settings.from_env(env)


def test_redacted_hides_only_the_password() -> None:
    assert redacted("postgresql+psycopg2://user:s3cr:et@db:5432/x") == "postgresql+psycopg2://user:***@db:5432/x"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_secrets_are_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    made = stack_secrets(path)
    assert set(made) == {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"}
    assert path.stat().st_mode & 0o777 == 0o600 and stack_secrets(path) == made
    from cryptography.fernet import Fernet

    Fernet(made["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key


def test_password_file_keeps_entries(tmp_path: Path) -> None:
    path = tmp_path / "passwords.json"
    first = ensure_password(path, "admin", "")
    assert first and json.loads(path.read_text()) == {"admin": first} and path.stat().st_mode & 0o777 == 0o600
    assert ensure_password(path, "admin", "") == first  # kept
    assert ensure_password(path, "ops", "given") == "given"
    assert json.loads(path.read_text()) == {"admin": first, "ops": "given"}
    path.write_text("")
    assert ensure_password(path, "admin", "x") == "x"


def test_components_environment() -> None:
    caller = {"PATH": "/usr/bin", "PYTHONPATH": "/lib", "AIRFLOW__CORE__PARALLELISM": "9",
              "AIRFLOW__API_AUTH__JWT_SECRET": "from the caller", "MLOPS_MLFLOW_UI_URL": "https://mlflow.example"}
    s = Settings.from_env({**CELERY, "AIRFLOW_STACK_HOME": "/srv/stack", "AIRFLOW_STACK_MLFLOW_BACKEND_URI": "pg://m",
                           "AIRFLOW_STACK_SERVING": "0"})
    env = stack_env(s, caller, {"AIRFLOW__API_AUTH__JWT_SECRET": "kept"})
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "kept"  # the secrets file wins, as when the shell sources it
    assert env["AIRFLOW__CORE__PARALLELISM"] == "9" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["PYTHONPATH"] == f"{REPO}:/lib" and env["PATH"] == f"{s.venv}/bin:/usr/bin"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and env["AIRFLOW__CELERY__BROKER_URL"] == s.broker_url
    assert env["MLOPS_TRACKING_URI"] == s.mlflow_url == "http://127.0.0.1:5000"
    assert env["MLOPS_MLFLOW_UI_URL"] == "https://mlflow.example" and "MLOPS_SERVING_URL" not in env
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    local = stack_env(Settings.from_env({}), {}, {})
    assert local["AIRFLOW__CORE__PARALLELISM"] == "4" and local["PYTHONPATH"] == str(REPO)
    assert local["MLOPS_SERVING_URL"] == "http://127.0.0.1:8000" and "AIRFLOW__CELERY__BROKER_URL" not in local
    with pytest.raises(StackError, match="needs the MLflow server"):
        stack_env(Settings.from_env({"AIRFLOW_STACK_MLFLOW": "0", "AIRFLOW_STACK_MLFLOW_BACKEND_URI": "pg://m"}),
                  {}, {})


def test_env_lines_read_back_by_the_shell(tmp_path: Path) -> None:
    s = Settings.from_env({"AIRFLOW_STACK_HOME": str(tmp_path)})
    env = stack_env(s, {"PATH": "/usr/bin", "MLOPS_TRACKING_URI": "sqlite:////a b/it's $HOME.db", "OTHER": "x"}, {})
    first, *exports = env_lines(s, env)
    assert first == f"set -a; . '{tmp_path}/stack/secrets.env'; set +a"
    words = [shlex.split(line) for line in exports]  # what the shell makes of them
    assert all(len(w) == 2 and w[0] == "export" for w in words)
    read_back = dict(w[1].split("=", 1) for w in words)
    assert read_back["MLOPS_TRACKING_URI"] == "sqlite:////a b/it's $HOME.db" and "OTHER" not in read_back
    assert read_back == {name: env[name] for name in read_back}
    assert list(read_back)[:2] == ["AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"] and list(read_back)[-1] == "PATH"


def test_pid_files_name_a_process_only_while_it_runs(tmp_path: Path) -> None:
    me = os.getpid()
    started = start_time(me)
    assert started and started == Path("/proc/self/stat").read_text().rsplit(") ", 1)[1].split()[19]
    (tmp_path / "me.pid").write_text(f"{me} {started}\n")
    (tmp_path / "reused.pid").write_text(f"{me} {int(started) - 1}\n")  # the pid of an earlier process
    (tmp_path / "gone.pid").write_text("4194305 1\n")  # above the largest pid Linux hands out
    (tmp_path / "junk.pid").write_text("not a pid\n")
    (tmp_path / "half.pid").write_text(f"{me} \n")  # `up` found the process already gone
    assert recorded_pid(tmp_path, "me") == me
    for name in ("reused", "gone", "junk", "half", "missing"):
        assert recorded_pid(tmp_path, name) is None, name
    assert start_time(4194305) is None


def test_signals_to_what_is_gone() -> None:
    assert kill([4194305], 0) == [] and kill([4194305], 0, group=True) == []
    assert wait_groups(5, [4194305]) == []


def test_one_up_or_down_at_a_time(tmp_path: Path) -> None:
    with lock(tmp_path / "stack"), pytest.raises(StackError, match="another up/down holds"):
        lock(tmp_path / "stack", wait=0.3)
    with lock(tmp_path / "stack"):
        pass


def test_usage_and_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("AIRFLOW_STACK_HOME", str(tmp_path / "home"))
    assert main(["restart"]) == 2 and "usage: scripts/airflow_stack.sh up|down|status|env" in capsys.readouterr().err
    monkeypatch.setenv("AIRFLOW_STACK_VENV", str(tmp_path / "no-venv"))
    assert main(["env"]) == 1 and "airflow_stack: no Python at" in capsys.readouterr().err
    assert main(["down"]) == 0 and capsys.readouterr().out == f"Stack in {tmp_path / 'home'} was not running.\n"


# --- logins ----------------------------------------------------------------------------------------------------


def test_auth_managers() -> None:
    simple = stack_env(Settings.from_env({"AIRFLOW_STACK_HOME": "/srv/stack"}), {}, {})
    assert simple["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGERS["simple"]
    assert simple["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert simple["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == \
        "/srv/stack/simple_auth_manager_passwords.json"
    s = Settings.from_env({"AIRFLOW_STACK_HOME": "/srv/stack", "AIRFLOW_STACK_AUTH": "fab"})
    fab = stack_env(s, {}, {})
    assert fab["AIRFLOW__CORE__AUTH_MANAGER"] == "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    assert not [key for key in fab if "SIMPLE_AUTH_MANAGER" in key]
    assert s.passwords_file == Path("/srv/stack/fab_passwords.json")
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager  # the pinned provider has it

    assert f"{FabAuthManager.__module__}.{FabAuthManager.__name__}" == AUTH_MANAGERS["fab"]
    compile(FAB_ADMIN_SCRIPT, "FAB_ADMIN_SCRIPT", "exec")
    assert "argv" not in FAB_ADMIN_SCRIPT and 'os.environ["AIRFLOW_ADMIN_PASSWORD"]' in FAB_ADMIN_SCRIPT


def test_mlflow_login_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.env"
    made = mlflow_login(path, "admin", "")
    assert made["MLFLOW_TRACKING_USERNAME"] == "admin" and len(made["MLFLOW_TRACKING_PASSWORD"]) >= 12
    assert path.stat().st_mode & 0o777 == 0o600 and mlflow_login(path, "admin", "") == made  # kept
    read_back = dict(w.split("=", 1) for w in shlex.split(path.read_text()))  # what `. mlflow.env` sets
    assert read_back == made
    assert mlflow_login(path, "admin", "it's a $password")["MLFLOW_TRACKING_PASSWORD"] == "it's a $password"
    assert dict(w.split("=", 1) for w in shlex.split(path.read_text()))["MLFLOW_TRACKING_PASSWORD"] == \
        "it's a $password"
    other = mlflow_login(path, "pipeline", "")  # another user gets a password of its own
    assert other["MLFLOW_TRACKING_USERNAME"] == "pipeline" and other["MLFLOW_TRACKING_PASSWORD"] != "it's a $password"


def test_mlflow_auth_follows_the_backend_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a backend URI (the production topology) every process gets the MLflow login, and `env` sources it."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # a login this process may hold already
        monkeypatch.delenv(name, raising=False)  # (tests/topology/conftest.py's, on the same xdist worker)
    s = Settings.from_env({**CELERY, "AIRFLOW_STACK_HOME": str(tmp_path), "AIRFLOW_STACK_MLFLOW_BACKEND_URI": "pg://m",
                           "AIRFLOW_STACK_MLFLOW_ADMIN_USER": "pipeline"})
    assert s.mlflow_auth and s.mlflow_login_file == tmp_path / "stack" / "mlflow.env"
    monkeypatch.setenv("AIRFLOW_STACK_VENV", sys.prefix)
    env = prepare(s)
    assert env["MLFLOW_TRACKING_USERNAME"] == "pipeline" and env["MLFLOW_TRACKING_PASSWORD"]
    assert env_lines(s, env)[0] == f"set -a; . '{tmp_path}/stack/secrets.env'; . '{tmp_path}/stack/mlflow.env'; set +a"
    embedded = Settings.from_env({"AIRFLOW_STACK_HOME": str(tmp_path / "embedded")})
    assert "MLFLOW_TRACKING_PASSWORD" not in prepare(embedded)


def test_mlflow_auth_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The basic-auth app's config as MLflow reads it; the admin and the secret key come by environment."""
    home = tmp_path / "100% stack"  # configparser would read a bare % as an interpolation
    s = Settings.from_env({**CELERY, "AIRFLOW_STACK_HOME": str(home), "AIRFLOW_STACK_MLFLOW_BACKEND_URI": "pg://m"})
    env = {"AIRFLOW__API__SECRET_KEY": "k1", "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": "twelve chars"}
    extra = mlflow_auth_env(s, env)
    config = Path(extra["MLFLOW_AUTH_CONFIG_PATH"])
    assert config == home / "mlflow-auth" / "basic_auth.ini" and config.stat().st_mode & 0o777 == 0o600
    assert (extra["MLFLOW_AUTH_ADMIN_USERNAME"], extra["MLFLOW_AUTH_ADMIN_PASSWORD"]) == ("admin", "twelve chars")
    key = extra["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert len(key) == 64 and mlflow_auth_env(s, env)["MLFLOW_FLASK_SERVER_SECRET_KEY"] == key  # stable
    assert mlflow_auth_env(s, {**env, "AIRFLOW__API__SECRET_KEY": "k2"})["MLFLOW_FLASK_SERVER_SECRET_KEY"] != key
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config))
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    read = read_auth_config()
    assert read.database_uri == f"sqlite:///{home}/mlflow-auth/basic_auth.db"
    assert read.default_permission == "NO_PERMISSIONS" and read.admin_password is None  # no secret in the file
    # MLflow's login, then the registry's writers: the pipeline's login only (tests/ops/test_mlflow_registry.py).
    assert read.authorization_function == "scripts.mlflow_auth:authenticate_request"
    from scripts.mlflow_auth import registry_writers

    registry_writers.cache_clear()
    assert registry_writers() == {"admin"}
    registry_writers.cache_clear()
    s = Settings.from_env({**CELERY, "AIRFLOW_STACK_HOME": str(home), "AIRFLOW_STACK_MLFLOW_BACKEND_URI": "pg://m",
                           "AIRFLOW_STACK_MLFLOW_AUTH_DB_URI": "postgresql+psycopg2://u:p%40ss@db/mlflow_auth"})
    mlflow_auth_env(s, env)
    assert read_auth_config().database_uri == "postgresql+psycopg2://u:p%40ss@db/mlflow_auth"


def test_the_local_server_captures_where_the_monitor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """SERVING_CAPTURE_DIR of the stack's prediction server: the config's monitoring.capture_dir, or
    MLOPS_CAPTURE_DIR; relative paths at the project root."""
    for name in ("MLOPS_CAPTURE_DIR", "MLOPS_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = pipeline_settings({})
    assert capture_dir(config, {}) == REPO / "capture"
    assert capture_dir(config, {"MLOPS_CAPTURE_DIR": "/srv/capture"}) == Path("/srv/capture")
    assert capture_dir(config, {"MLOPS_CAPTURE_DIR": "elsewhere"}) == REPO / "elsewhere"
