"""What `up`, `down` and `status` do: start each component detached (stack/<name>.log and .pid), wait until
the api-server reports every heartbeat fresh (and MLflow, the prediction server and the Celery workers answer),
stop exactly what `up` started, scheduler side first, then anything left that carries the stack's marker.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from scripts.stack_processes import descendants, kill, marked_pids, recorded_pid, start_time, wait_groups
from scripts.stack_settings import (
    FAB_ADMIN_SCRIPT,
    PROG,
    REPO,
    Settings,
    StackError,
    capture_dir,
    ensure_password,
    mlflow_auth_env,
    pipeline_settings,
    prepare,
    redacted,
    worker_node,
)

if TYPE_CHECKING:
    from include.ml.config_file import ConfigFile

HEARTBEATS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


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
    no longer show the stack's marker in its environment; `down` ends any that outlive their parent.
    """
    groups = []
    for name in names:
        if pid := recorded_pid(s.run_dir, name):
            print(f"  stopping {name} (process group {pid})")
            own_groups |= {child: started for child, group in descendants(pid).items()
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
