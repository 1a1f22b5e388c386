"""The project's local Airflow 3 stack, without Docker: `make up` / `make down` (scripts/airflow_stack.sh runs this).

    python -m scripts.stack up       # start what is not running, wait until healthy, print URLs and login
    python -m scripts.stack status   # what runs, and the api-server's health report
    python -m scripts.stack down     # stop exactly what `up` started
    eval "$(python -m scripts.stack env)"   # then `airflow ...` CLI commands talk to this stack

api-server, scheduler, dag-processor and triggerer (LocalExecutor, SQLite metadata DB), the MLflow UI on the
project's tracking store, and the prediction server (gunicorn) on the local model store that the DAG's deploy task
(deployment.target: local) keeps on the champion. Settings alone (`Settings`) turn it into the production topology
of docker-compose.yaml: CeleryExecutor with workers as separate processes, PostgreSQL, Redis, MLflow on PostgreSQL.
The caller's environment reaches every process, tasks included: set MLOPS_* (include/config/config.yaml) or any
AIRFLOW__SECTION__KEY before `up` to change them. Everything lives in the stack home: airflow.db, logs/ (task
logs), stack/<component>.log and .pid ("pid start-time"), stack/secrets.env (JWT secret, API secret key, Fernet
key; made once, mode 600) and simple_auth_manager_passwords.json (the UI/API login).

Authentication: the embedded default runs Airflow's SimpleAuthManager (development only) and an MLflow UI without
any login, both on loopback. AIRFLOW_STACK_AUTH=fab runs the FAB auth manager (users in the metadata DB; `up`
creates or updates the admin, login kept in fab_passwords.json). With an MLflow backend URI (the production
topology) MLflow runs its basic-auth app: its admin login is stack/mlflow.env (MLFLOW_TRACKING_USERNAME/PASSWORD,
what every process, tasks included, authenticates with), its user store mlflow-auth/basic_auth.db.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode, urlsafe_b64encode
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from include.ml.entities import ConfigFile

REPO = Path(os.path.abspath(__file__)).parents[1]
PROG = "scripts/airflow_stack.sh"
HEARTBEATS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
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


# --- processes -------------------------------------------------------------------------------------------------

def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on; [] if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_time(pid: int) -> str | None:
    """Start time in clock ticks since boot (guards against PID reuse); None if gone or a zombie."""
    stat = proc_stat(pid)
    return stat[19] if stat and stat[0] != "Z" else None


def recorded_pid(run_dir: Path, name: str) -> int | None:
    """The pid in <name>.pid, if it still names the process `up` started."""
    with suppress(OSError, ValueError):
        pid, started = (run_dir / f"{name}.pid").read_text().split()[:2]
        return int(pid) if start_time(int(pid)) == started else None
    return None


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process."""
    return {int(p): (int(stat[1]), int(stat[2])) for p in os.listdir("/proc")
            if p.isdigit() and (stat := proc_stat(int(p)))}


def descendants(root: int, table: Mapping[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> process group of every process below root in a processes() table."""
    found = {}
    for pid, (parent, group) in table.items():
        ancestor = parent
        for _ in table:  # bounded: a table read while processes come and go could hold a loop
            if ancestor <= 1 or ancestor == root:
                break
            ancestor = table.get(ancestor, (0, 0))[0]
        if ancestor == root:
            found[pid] = group
    return found


def marked_pids(stack_id: str) -> set[int]:
    """Live processes whose environment carries the stack's marker, AIRFLOW_STACK_ID=<stack home>."""
    marker, found = f"AIRFLOW_STACK_ID={stack_id}".encode(), set()
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        with suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
    return found


def kill(pids: list[int], sig: int, group: bool = False) -> list[int]:
    """Signal processes (or process groups); those that exist (with signal 0: groups that have a member left)."""
    hit = []
    for pid in pids:
        with suppress(OSError):
            (os.killpg if group else os.kill)(pid, sig)
            hit.append(pid)
    return hit


def wait_groups(seconds: float, groups: list[int]) -> list[int]:
    """Wait until the process groups are gone or the time is up; those still alive."""
    deadline = time.monotonic() + seconds
    while (alive := kill(groups, 0, group=True)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


# --- commands --------------------------------------------------------------------------------------------------

def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=5) as response:
        return response.status, response.read()


def mlflow_login_refused(s: Settings, env: Mapping[str, str]) -> str | None:
    """Why the MLflow server turns the stack's login away (None: it accepts it). The auth app takes its admin's
    password from the settings only when it creates that admin, so a password changed later no longer works."""
    login = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
    try:
        http_get(f"{s.mlflow_url}/api/2.0/mlflow/users/current",
                 {"Authorization": "Basic " + b64encode(login.encode()).decode()})
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return (f"the MLflow server refuses the login of {env['MLFLOW_TRACKING_USERNAME']} from "
                    f"{s.mlflow_login_file} (HTTP {exc.code}); its user store {s.mlflow_auth_dir} keeps the password "
                    "it was first started with: set that one, or change it with MLflow's users/update-password API")
        raise
    return None


def probe(url: str) -> str:
    try:
        return "healthy" if http_get(url)[0] == 200 else "unhealthy"
    except OSError as exc:
        return f"no answer ({exc.__class__.__name__})"


def celery_ping(env: Mapping[str, str], nodes: list[str]) -> set[str]:
    """The Celery nodes that answer a ping through the broker, asked with Airflow's own Celery app."""
    os.environ.update(env)  # Airflow reads the broker URL and its options from the environment on import
    from airflow.providers.celery.executors.celery_executor_utils import app

    return {node for reply in app.control.ping(nodes, timeout=1.0) for node in reply}


def wait_healthy(s: Settings, env: Mapping[str, str], since: int, started: list[str]) -> bool:
    """Poll until all is healthy (heartbeats of components started now newer than `since`); False, with the
    reason on stderr, if a component exits or the time is up."""
    pids = {name: recorded_pid(s.run_dir, name) or 0 for name in s.components()}
    workers = {name: worker_node(name) for name in pids if name.startswith("worker-")}
    deadline, state = time.monotonic() + s.timeout, "no answer yet"
    while True:
        if dead := [name for name, pid in pids.items() if start_time(pid) is None]:
            for name in dead:
                print(f"airflow_stack: {name} exited; last lines of {s.run_dir / name}.log:", file=sys.stderr)
                with suppress(OSError), open(s.run_dir / f"{name}.log", errors="replace") as log:
                    sys.stderr.writelines(log.readlines()[-25:])
            return False
        try:
            health = json.loads(http_get(f"{s.api_url}/api/v2/monitor/health")[1])
            state = {"metadatabase": health["metadatabase"]["status"]}
            for component, field in HEARTBEATS.items():
                info = health.get(field) or {}
                beat = info.get(f"latest_{field}_heartbeat")
                fresh = component not in started or (
                    beat is not None and datetime.fromisoformat(beat).timestamp() >= since)
                state[component] = info.get("status") if fresh else "starting"
            if s.mlflow:
                state["mlflow"] = probe(f"{s.mlflow_url}/health")
                if s.mlflow_auth and state["mlflow"] == "healthy" and (refused := mlflow_login_refused(s, env)):
                    print(f"airflow_stack: {refused}", file=sys.stderr)
                    return False
            if s.serving:  # live, model or not: the first deploy gives it one
                state["serving"] = probe(f"{s.serving_url}/health")
            if workers:  # a Celery worker is healthy once it answers a ping through the broker
                try:
                    answered = celery_ping(env, list(workers.values()))
                except Exception as exc:  # noqa: BLE001 - the broker may not answer yet
                    answered, state["broker"] = set(), f"no answer ({exc.__class__.__name__})"
                state.update((name, "healthy" if node in answered else "starting") for name, node in workers.items())
            if all(value == "healthy" for value in state.values()):
                print("  healthy: " + ", ".join(state))
                return True
        except (OSError, ValueError, KeyError) as exc:
            state = f"api-server: no answer ({exc.__class__.__name__})"
        if time.monotonic() > deadline:
            print(f"airflow_stack: not healthy after {s.timeout:g}s: {state}", file=sys.stderr)
            return False
        time.sleep(1)


def start(s: Settings, name: str, env: dict[str, str], pipeline: Callable[[], ConfigFile]) -> bool:
    """Start one component, its output appended to stack/<name>.log and "pid start-time" in stack/<name>.pid.

    False if there is nothing to start (MLflow when the tracking store is a server).
    """
    airflow, extra = s.bin("airflow"), {}
    # Logs are local files the api-server reads directly: no log-serving sub-servers (and ports) needed.
    command = {"api-server": [airflow, "api-server", "--host", s.host, "--port", str(s.api_port)],
               "scheduler": [airflow, "scheduler", "--skip-serve-logs"], "dag-processor": [airflow, "dag-processor"],
               "triggerer": [airflow, "triggerer", "--skip-serve-logs"]}.get(name, [])
    if name.startswith("worker-"):
        # Workers on one machine share its hostname: each records its Celery node name as the hostname of the
        # task instances it runs (scripts/stack_hostname.py), so the UI and the API tell which worker ran what.
        command = [airflow, "celery", "worker", "--celery-hostname", worker_node(name), "--queues", s.queues,
                   "--concurrency", s.worker_concurrency, "--skip-serve-logs"]
        extra = {"AIRFLOW_STACK_WORKER_NAME": worker_node(name),
                 "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scripts.stack_hostname.hostname"}
    elif name == "serving":
        from include.release.signing import ensure_local_key_pair

        store = str(pipeline().deployment.local.model_store)
        os.makedirs(store, exist_ok=True)
        if not pipeline().signing.kms_key_id:
            ensure_local_key_pair(pipeline().signing)  # the server trusts what the pipeline signs
        command = [s.bin("gunicorn"), "-c", str(REPO / "serving" / "gunicorn.conf.py")]
        extra = {"SERVING_MODEL_STORE": store, "SERVING_BIND": f"{s.host}:{s.serving_port}",
                 "SERVING_WORKERS": env.get("SERVING_WORKERS") or "2",
                 "SERVING_PUBLIC_KEY": str(pipeline().signing.public_key),
                 "SERVING_CAPTURE_DIR": str(capture_dir(pipeline(), env))}
    elif name == "mlflow":
        tracking = s.mlflow_backend_uri or pipeline().mlflow.tracking_uri  # the server's own store: tasks use HTTP
        if tracking.startswith(("http://", "https://", "databricks")):
            print(f"  mlflow: the tracking server is {tracking}; not starting a local UI")
            return False
        if tracking.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(tracking.removeprefix("sqlite:///")) or ".", exist_ok=True)
        artifacts = pipeline().mlflow.artifact_location
        command = [s.bin("mlflow"), "server", "--backend-store-uri", tracking, "--host", s.host,
                   "--port", str(s.mlflow_port), "--workers", "1",
                   *(["--default-artifact-root", artifacts] if artifacts else [])]
        # The server's job runner (GenAI jobs, ~7 extra processes) is not needed for a tracking UI.
        extra = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") or "false"}
        if s.mlflow_auth:  # the production topology: nobody reads or writes without a login
            command[2:2] = ["--app-name", "basic-auth"]
            extra.update(mlflow_auth_env(s, env))
    log_path = s.run_dir / f"{name}.log"
    with open(log_path, "a") as log:  # detached: a session and process group of its own
        log.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting: {' '.join(command)}\n")
        log.flush()
        # The marker finds stragglers at `down`; close_fds (the default) keeps the stack lock from the daemons.
        pid = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env={**env, **extra, "AIRFLOW_STACK_ID": str(s.home)}, start_new_session=True).pid
    (s.run_dir / f"{name}.pid").write_text(f"{pid} {start_time(pid) or ''}\n")
    print(f"  started {name} (pid {pid}, log {log_path})")
    return True


def up(s: Settings) -> int:
    since = int(time.time())
    env = prepare(s)
    password = ensure_password(s.passwords_file, s.admin_user, s.admin_password)
    pipeline = functools.cache(lambda: pipeline_settings(env))  # read once, and only if MLflow or serving need it
    running = {name: recorded_pid(s.run_dir, name) for name in s.components()}
    for name, pid in running.items():
        if pid:
            print(f"  {name} already running (pid {pid})")
    to_start, started = [name for name, pid in running.items() if not pid], []
    if not to_start:
        print(f"Stack in {s.home} is already up.")
    ports = {"api-server": s.api_port, "mlflow": s.mlflow_port, "serving": s.serving_port}
    for port in (ports[name] for name in to_start if name in ports):
        with suppress(OSError), socket.create_connection((s.host, port), timeout=2):  # something answers there
            raise StackError(f"port {s.host}:{port} is taken by another process")
    if set(to_start) - {"mlflow", "serving"}:  # an Airflow component
        print(f"  migrating the metadata DB ({redacted(s.sql_conn)})")
        with open(s.run_dir / "db-migrate.log", "a") as log:
            if subprocess.run([s.bin("airflow"), "db", "migrate"], check=False, env=env, stdout=log,
                              stderr=log).returncode:
                raise StackError(f"airflow db migrate failed; see {s.run_dir}/db-migrate.log")
        if s.auth == "fab":  # the FAB auth manager's users live in the metadata DB (migrated just now)
            print(f"  FAB auth manager: admin {s.admin_user}")
            with open(s.run_dir / "fab-admin.log", "a") as log:
                if subprocess.run([s.bin("python"), "-c", FAB_ADMIN_SCRIPT], check=False, stdout=log, stderr=log,
                                  env={**env, "AIRFLOW_ADMIN_USER": s.admin_user,
                                       "AIRFLOW_ADMIN_PASSWORD": password}).returncode:
                    raise StackError(f"could not create the FAB admin; see {s.run_dir}/fab-admin.log")
    for name in to_start:
        if not start(s, name, env, pipeline):
            s = replace(s, mlflow=False)
        started.append(name)
    print(f"  waiting for health (up to {s.timeout:g}s)")
    if not wait_healthy(s, env, since, started):
        return 1
    print(f"\nAirflow UI:  {s.api_url}   (REST API: {s.api_url}/api/v2, docs: {s.api_url}/docs)")
    print(f"  login:     {s.admin_user} / {password}   (kept in {s.passwords_file}; auth manager: {s.auth})")
    if s.mlflow:
        login = f"   (login {env['MLFLOW_TRACKING_USERNAME']}, password in {s.mlflow_login_file})" if s.mlflow_auth \
            else "   (no login: loopback only, for development)"
        print(f"MLflow UI:   {s.mlflow_url}{login}")
    if s.serving:
        print(f"Predictions: {s.serving_url}   (model store {pipeline().deployment.local.model_store})")
    if s.worker_count:
        print(f"Workers:     {s.workers} Celery workers, {worker_node('worker-1')} ... "
              f"{worker_node(f'worker-{s.workers}')}, queues {s.queues}; broker {redacted(s.broker_url)}")
    print(f"Logs:        {s.run_dir}/*.log, task logs in {s.home}/logs\nStop with:   {PROG} down")
    return 0


def stop(s: Settings, names: list[str], own_groups: dict[int, str]) -> int:
    """SIGTERM their process groups, again after 10 s, SIGKILL after stop_timeout more; how many were running.

    Task processes in process groups of their own go to own_groups (pid -> start time): a setproctitle'd one may
    no longer show the stack's marker in /proc/<pid>/environ; `down` ends any that outlive their parent.
    """
    groups = []
    for name in names:
        if pid := recorded_pid(s.run_dir, name):
            print(f"  stopping {name} (process group {pid})")
            own_groups |= {child: started for child, group in descendants(pid, processes()).items()
                           if group != pid and (started := start_time(child))}
            kill([pid], signal.SIGTERM, group=True)
            groups.append(pid)
        (s.run_dir / f"{name}.pid").unlink(missing_ok=True)
    if left := wait_groups(10, groups):  # a second SIGTERM tells the scheduler not to wait for running tasks
        wait_groups(s.stop_timeout, kill(left, signal.SIGTERM, group=True))
    for pid in kill(groups, 0, group=True):
        print(f"  process group {pid} still alive: SIGKILL")
        kill([pid], signal.SIGKILL, group=True)
    return len(groups)


def down(s: Settings) -> int:
    own_groups: dict[int, str] = {}

    def strays() -> list[int]:  # task processes still there: they carry the marker, or were recorded by `stop`
        return sorted(marked_pids(str(s.home)) | {p for p, started in own_groups.items() if start_time(p) == started})

    workers = sorted(path.stem for path in s.run_dir.glob("worker-*.pid"))  # what `up` started, whatever the settings
    # Scheduler side first, then the Celery workers (a warm shutdown lets running tasks finish), while the
    # api-server still answers the running tasks' Execution API calls.
    stopped = sum(stop(s, names, own_groups) for names in (
        ["scheduler", "triggerer", "dag-processor"], workers, ["api-server", "mlflow", "serving"]))
    if left := strays():
        print(f"  stopping leftover processes: {' '.join(map(str, left))}")
        kill(left, signal.SIGTERM)
        time.sleep(3)
        kill(strays(), signal.SIGKILL)
    print(f"Stack in {s.home} {'stopped' if stopped else 'was not running'}.")
    return 0


def status(s: Settings) -> int:
    running = {name: recorded_pid(s.run_dir, name) for name in s.components()}
    for name, pid in running.items():
        print(f"  {name:<14} running (pid {pid})" if pid else f"  {name:<14} stopped")
    url = f"{s.api_url}/api/v2/monitor/health"
    try:
        print(f"  health ({url}): {http_get(url)[1].decode(errors='replace').rstrip()}")
    except OSError:
        print(f"  api-server at {s.api_url} does not answer")
        return 1
    return 0 if all(running.values()) else 1


def lock(run_dir: Path, wait: float = 300) -> IO[str]:
    """One `up` or `down` at a time per stack home: hold the returned file open while working."""
    run_dir.mkdir(parents=True, exist_ok=True)
    file, deadline = open(run_dir / ".lock", "w"), time.monotonic() + wait  # noqa: SIM115 - the caller closes it
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return file
        except BlockingIOError:
            if time.monotonic() > deadline:
                file.close()
                raise StackError(f"another up/down holds {run_dir}/.lock") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    command = next(iter(sys.argv[1:] if argv is None else argv), "")
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also through a pipe
    try:
        s = Settings.from_env(os.environ)
        s.home.mkdir(parents=True, exist_ok=True)
        if command in ("up", "down"):
            with lock(s.run_dir):
                return up(s) if command == "up" else down(s)
        if command == "status":
            return status(s)
        if command == "env":
            print("\n".join(env_lines(s, prepare(s))))
            return 0
    except StackError as exc:
        print(f"airflow_stack: {exc}", file=sys.stderr)
        return 1
    print(f"usage: {PROG} up|down|status|env", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
