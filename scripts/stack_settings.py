"""The local stack's settings (AIRFLOW_STACK_*), and what they make: the components' environment, the stack's
secrets and login files, the MLflow basic-auth config, `env`'s shell lines, the pipeline's config as tasks read it.

Nothing here starts or stops a process (scripts/stack_processes.py, scripts/stack_commands.py do); the command
line is scripts/stack.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import socket
from base64 import urlsafe_b64encode
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from include.ml.config_file import ConfigFile

REPO = Path(os.path.abspath(__file__)).parents[1]
PROG = "scripts/airflow_stack.sh"
ENV_LINES = (  # what `env` prints, when set
    "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
    "AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "AIRFLOW__API__HOST", "AIRFLOW__API__PORT",
    "AIRFLOW__API__BASE_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__LOGGING__BASE_LOG_FOLDER",
    "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
    "MLOPS_TRACKING_URI", "PYTHONPATH", "PATH")
AUTH_MANAGERS = {  # AIRFLOW_STACK_AUTH -> [core] auth_manager
    "simple": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",  # development only
    "fab": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",  # apache-airflow-providers-fab
}
# Creates the FAB admin, or sets its password, from AIRFLOW_ADMIN_USER / AIRFLOW_ADMIN_PASSWORD (never argv, which
# other users see in ps). docker-compose.yaml's airflow-init runs the same script (tests/topology checks that).
FAB_ADMIN_SCRIPT = """\
import os
import sys

from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
from werkzeug.security import check_password_hash

user, password = os.environ["AIRFLOW_ADMIN_USER"], os.environ["AIRFLOW_ADMIN_PASSWORD"]
with get_application_builder() as appbuilder:
    sm = appbuilder.sm
    found = sm.find_user(username=user)
    if found is None:
        if not sm.add_user(user, "Airflow", "Admin", user + "@localhost", sm.find_role("Admin"), password):
            sys.exit("could not create the Airflow admin " + user)
        print("Airflow admin " + user + " created")
    elif not check_password_hash(found.password, password):
        sm.reset_password(found.id, password)
        print("Airflow admin " + user + ": password set")
"""


class StackError(Exception):
    """Printed as `airflow_stack: <message>`; the command exits 1."""


@dataclass(frozen=True)
class Settings:
    """Each field comes from AIRFLOW_STACK_<FIELD>; empty counts as unset (as in the shell's ${VAR:-default})."""

    home: Path = REPO / "airflow_home"
    host: str = "127.0.0.1"  # the servers bind to it
    api_port: int = 8080
    mlflow_port: int = 5000
    serving_port: int = 8000  # the prediction server; deploy tasks target it (MLOPS_SERVING_URL)
    mlflow: bool = True  # 0 = no MLflow UI
    serving: bool = True  # 0 = no prediction server
    admin_user: str = "admin"
    admin_password: str = ""  # "" = generated on the first `up`, then kept in the passwords file
    auth: str = "simple"  # simple (SimpleAuthManager, development only) or fab (FAB auth manager)
    dags_folder: Path = REPO / "dags"
    plugins_folder: Path = REPO / "plugins"
    venv: Path = REPO / ".venv"
    timeout: float = 180  # seconds `up` waits for health
    stop_timeout: float = 20  # seconds `down` waits after a second SIGTERM before SIGKILL
    # The production topology (docs/topology.md):
    executor: str = "local"  # local (LocalExecutor) or celery (CeleryExecutor)
    sql_conn: str = ""  # metadata DB; "" = sqlite:///<home>/airflow.db; celery: e.g. postgresql+psycopg2://...
    broker_url: str = ""  # Celery broker (celery: required), e.g. redis://127.0.0.1:6379/0
    workers: str = "2"  # Celery workers worker-1..N, named worker-<n>@<host> in Celery and their tasks' hostname
    worker_concurrency: str = "2"  # task slots per worker
    queues: str = ""  # the workers' queues; "" = [operators] default_queue (default)
    # The MLflow server's store, e.g. postgresql://...: tasks then log through the server
    # (MLOPS_TRACKING_URI=http://<host>:<mlflow port>) and artifacts go to MLOPS_ARTIFACT_LOCATION.
    mlflow_backend_uri: str = ""
    # ... and the server then runs MLflow's basic-auth app (mlflow_auth) with this admin, whom every process uses.
    mlflow_admin_user: str = "admin"
    mlflow_admin_password: str = ""  # "" = generated on the first `up`, then kept in stack/mlflow.env
    mlflow_auth_db_uri: str = ""  # the auth app's user store; "" = sqlite:///<home>/mlflow-auth/basic_auth.db

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        kinds = {"int": int, "float": float, "bool": lambda v: v == "1", "Path": lambda v: Path(os.path.abspath(v))}
        values = {}
        for field in fields(cls):
            if raw := env.get(name := f"AIRFLOW_STACK_{field.name.upper()}"):
                try:
                    values[field.name] = kinds.get(field.type, str)(raw)
                except ValueError:
                    raise StackError(f"{name} must be a number, not '{raw}'") from None
        s = cls(**values)
        s = replace(s, sql_conn=s.sql_conn or f"sqlite:///{s.home}/airflow.db",
                    queues=s.queues or env.get("AIRFLOW__OPERATORS__DEFAULT_QUEUE") or "default")
        if s.auth not in AUTH_MANAGERS:
            raise StackError(f"AIRFLOW_STACK_AUTH must be simple or fab, not '{s.auth}'")
        if s.executor not in ("local", "celery"):
            raise StackError(f"AIRFLOW_STACK_EXECUTOR must be local or celery, not '{s.executor}'")
        if s.executor == "celery" and not s.broker_url:
            raise StackError("AIRFLOW_STACK_EXECUTOR=celery needs AIRFLOW_STACK_BROKER_URL")
        if s.executor == "celery" and s.sql_conn.startswith("sqlite"):
            raise StackError("the CeleryExecutor cannot use SQLite; set AIRFLOW_STACK_SQL_CONN")
        if s.executor == "celery" and not re.fullmatch(r"[1-9][0-9]*", s.workers):
            raise StackError(f"AIRFLOW_STACK_WORKERS must be a positive integer, not '{s.workers}'")
        return s

    run_dir = property(lambda self: self.home / "stack")
    passwords_file = property(lambda self: self.home / (
        "fab_passwords.json" if self.auth == "fab" else "simple_auth_manager_passwords.json"))
    mlflow_auth = property(lambda self: bool(self.mlflow_backend_uri))  # the production topology's MLflow server
    mlflow_login_file = property(lambda self: self.run_dir / "mlflow.env")
    mlflow_auth_dir = property(lambda self: self.home / "mlflow-auth")
    api_url = property(lambda self: f"http://{self.host}:{self.api_port}")
    mlflow_url = property(lambda self: f"http://{self.host}:{self.mlflow_port}")
    serving_url = property(lambda self: f"http://{self.host}:{self.serving_port}")
    worker_count = property(lambda self: int(self.workers) if self.executor == "celery" else 0)

    def bin(self, program: str) -> str:
        return str(self.venv / "bin" / program)

    def components(self) -> list[str]:
        return ["api-server", "scheduler", "dag-processor", "triggerer",
                *(f"worker-{n}" for n in range(1, self.worker_count + 1)),
                *(["mlflow"] if self.mlflow else []), *(["serving"] if self.serving else [])]


def worker_node(component: str) -> str:
    """worker-<n> -> its Celery node name, also the hostname its task instances record."""
    return f"{component}@{os.environ.get('HOSTNAME') or socket.gethostname()}"


def redacted(url: str) -> str:
    """A URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url, count=1)


def write_private(path: Path, text: str) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:  # new: mode 600
        f.write(text)


def stack_secrets(path: Path) -> dict[str, str]:
    """The KEY='value' lines of secrets.env, made once: restarts keep sessions and encrypted connections valid."""
    if not (path.exists() and path.stat().st_size):
        fernet_key = urlsafe_b64encode(os.urandom(32)).decode()  # what cryptography's Fernet.generate_key() makes
        write_private(path, f"AIRFLOW__API_AUTH__JWT_SECRET='{secrets.token_urlsafe(48)}'\n"
                            f"AIRFLOW__API__SECRET_KEY='{secrets.token_urlsafe(32)}'\n"
                            f"AIRFLOW__CORE__FERNET_KEY='{fernet_key}'\n")
    return dict(word.split("=", 1) for word in shlex.split(path.read_text(), comments=True) if "=" in word)


def mlflow_login(path: Path, user: str, wanted: str) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME/PASSWORD in a KEY='value' file (mode 600): the password kept unless `wanted`."""
    try:
        kept = dict(word.split("=", 1) for word in shlex.split(path.read_text(), comments=True) if "=" in word)
    except FileNotFoundError:
        kept = {}
    same_user = kept.get("MLFLOW_TRACKING_USERNAME") == user
    password = wanted or (same_user and kept.get("MLFLOW_TRACKING_PASSWORD")) or secrets.token_urlsafe(18)
    login = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}  # MLflow wants >= 12 chars
    if kept != login:
        write_private(path, "".join(f"{key}={shlex.quote(value)}\n" for key, value in login.items()))
    return login


def ensure_password(path: Path, user: str, wanted: str) -> str:
    """The SimpleAuthManager reads {"user": "password"} from this file and never overwrites an entry."""
    try:
        passwords = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        passwords = {}
    password = wanted or passwords.get(user) or secrets.token_urlsafe(12)
    if passwords.get(user) != password:
        write_private(path, json.dumps({**passwords, user: password}) + "\n")
    return password


def stack_env(s: Settings, base: Mapping[str, str], secret: Mapping[str, str]) -> dict[str, str]:
    """The components' environment (and `env`'s): the caller's, the secrets, then the stack's settings."""
    if s.mlflow_backend_uri and not s.mlflow:
        raise StackError("AIRFLOW_STACK_MLFLOW_BACKEND_URI needs the MLflow server (AIRFLOW_STACK_MLFLOW=1)")
    env = {**base, **secret}
    env.update(
        AIRFLOW_HOME=str(s.home), AIRFLOW__CORE__DAGS_FOLDER=str(s.dags_folder),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(s.plugins_folder), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=s.sql_conn,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor" if s.executor == "celery" else "LocalExecutor",
        AIRFLOW__CORE__AUTH_MANAGER=AUTH_MANAGERS[s.auth],
        AIRFLOW__API__HOST=s.host, AIRFLOW__API__PORT=str(s.api_port), AIRFLOW__API__BASE_URL=s.api_url,
        # Task processes report to the api-server's Execution API; must follow a non-default port.
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{s.api_url}/execution/",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(s.home / "logs"),
        # LocalExecutor forks this many worker processes up front (Airflow's default, 32, is a lot on a laptop).
        AIRFLOW__CORE__PARALLELISM=base.get("AIRFLOW__CORE__PARALLELISM") or "4",
        # scikit-learn's OpenMP threads spin while idle and fight other busy processes on a small box
        # (HistGradientBoosting fit 4 s -> 8 s beside one busy loop; see docs/benchmarks.md).
        OMP_WAIT_POLICY=base.get("OMP_WAIT_POLICY") or "PASSIVE",
        PYTHONPATH=":".join(filter(None, (str(REPO), base.get("PYTHONPATH")))),  # tasks import include.ml
        PATH=f"{s.venv / 'bin'}:{base.get('PATH', os.defpath)}")
    if s.auth == "simple":
        env.update(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{s.admin_user}:admin",
                   AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(s.passwords_file))
    if s.executor == "celery":  # results go to the metadata DB unless AIRFLOW__CELERY__RESULT_BACKEND says otherwise
        env["AIRFLOW__CELERY__BROKER_URL"] = s.broker_url
    if s.mlflow_backend_uri:  # tasks log through the tracking server; only the server talks to its store
        env["MLOPS_TRACKING_URI"] = s.mlflow_url
    if s.mlflow:  # task links to MLflow runs (plugins/mlops_links.py) open this stack's MLflow UI
        env["MLOPS_MLFLOW_UI_URL"] = base.get("MLOPS_MLFLOW_UI_URL") or s.mlflow_url
    if s.serving:  # the local deploy target refreshes this stack's prediction server
        env["MLOPS_SERVING_URL"] = s.serving_url
    return env


def mlflow_auth_config(database_uri: str, registry_writers: str) -> str:
    """The basic-auth app's config (docker/mlflow/basic-auth-entrypoint.sh writes the same for compose): nobody
    reads what no grant of theirs allows, and only `registry_writers` (the pipeline's login) write to the model
    registry (scripts/mlflow_auth.py checks every request)."""
    return ("[mlflow]\n"
            "# a logged-in user reads or writes only what a grant of theirs allows (admins: everything)\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {database_uri.replace('%', '%%')}\n"  # configparser reads %% as %
            "# MLflow's login, then only these users may create, alias, version, rename or delete registered models\n"
            "authorization_function = scripts.mlflow_auth:authenticate_request\n"
            f"registry_writers = {registry_writers.replace('%', '%%')}\n")


def mlflow_auth_env(s: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """The MLflow server's basic-auth settings: its config file (written here; no secret in it), its admin
    (created in the user store on the server's first start; later starts check the login, see wait_healthy),
    and the secret its forms' CSRF tokens are signed with (derived from the stack's API secret key)."""
    s.mlflow_auth_dir.mkdir(parents=True, exist_ok=True)
    store = s.mlflow_auth_db_uri or f"sqlite:///{s.mlflow_auth_dir / 'basic_auth.db'}"
    config = s.mlflow_auth_dir / "basic_auth.ini"
    write_private(config, mlflow_auth_config(store, env["MLFLOW_TRACKING_USERNAME"]))
    secret_key = hashlib.sha256(f"mlflow-server:{env['AIRFLOW__API__SECRET_KEY']}".encode()).hexdigest()
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
            "MLFLOW_AUTH_ADMIN_USERNAME": env["MLFLOW_TRACKING_USERNAME"],
            "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_TRACKING_PASSWORD"]}


def prepare(s: Settings) -> dict[str, str]:
    """Check the venv, make the folders and the secrets; return the components' environment."""
    if not os.access(s.bin("python"), os.X_OK):
        raise StackError(f"no Python at {s.bin('python')}; run 'make venv' first (or set AIRFLOW_STACK_VENV)")
    for folder in (s.run_dir, s.dags_folder, s.plugins_folder):
        folder.mkdir(parents=True, exist_ok=True)
    secret = stack_secrets(s.run_dir / "secrets.env")
    if s.mlflow_auth:  # every process, tasks included, logs to MLflow as its admin (MLflow's own variables)
        secret = {**secret, **mlflow_login(s.mlflow_login_file, s.mlflow_admin_user, s.mlflow_admin_password)}
    return stack_env(s, os.environ, secret)


def env_lines(s: Settings, env: Mapping[str, str]) -> list[str]:
    """Shell lines that point the `airflow` CLI at this stack."""
    files = [s.run_dir / "secrets.env", *([s.mlflow_login_file] if s.mlflow_auth else [])]
    sourced = " ".join(f". '{path}';" for path in files)
    return [f"set -a; {sourced} set +a",
            *(f"export {name}={shlex.quote(env[name])}" for name in ENV_LINES if name in env)]


def pipeline_settings(env: Mapping[str, str]) -> ConfigFile:
    """The pipeline's config.yaml as the stack's tasks will see it (its config dir, MLOPS_* overrides)."""
    from include.ml.configuration import read_config_file, resolve_config_dir
    from include.ml.exceptions import ConfigError

    try:
        return read_config_file(resolve_config_dir(None, env), env)
    except ConfigError as exc:
        raise StackError(f"cannot read the pipeline's configuration: {exc}") from exc


def capture_dir(config: ConfigFile, env: Mapping[str, str]) -> Path:
    """Where the local prediction server writes its capture files, for the monitor to read: the config's
    monitoring.capture_dir (default "capture"), MLOPS_CAPTURE_DIR when set; relative to the project root."""
    monitoring = getattr(config, "monitoring", None)  # the monitor's optional section (issue 13)
    path = Path(env.get("MLOPS_CAPTURE_DIR") or getattr(monitoring, "capture_dir", None) or "capture")
    return path if path.is_absolute() else REPO / path
