"""A small client for Airflow 3's REST API (v2), enough to drive a DAG run from a test or a shell.

    client = AirflowClient("http://127.0.0.1:8080", "admin", password)
    client.wait_for_dag("ml_pipeline")
    client.unpause("ml_pipeline")
    run = client.trigger("ml_pipeline", conf={"force_promote": True})
    client.wait_for_run("ml_pipeline", run["dag_run_id"])      # raises DagRunFailed with the failed tasks' logs
    client.task_log("ml_pipeline", run["dag_run_id"], "train")

From a shell, against the stack `scripts/airflow_stack.sh up` started:

    .venv/bin/python -m scripts.airflow_client ml_pipeline [--conf '{"force_promote": true}']

Authentication: the auth manager hands out a JWT for a username and password at POST /auth/token (the
SimpleAuthManager of the embedded stack and the FAB auth manager of the production topology both do); the
client sends it as a Bearer token and fetches a new one on a 401. `stack_login()` finds the login of the stack
scripts/airflow_stack.sh runs with the caller's AIRFLOW_STACK_* settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

FINISHED = {"success", "failed"}


class AirflowApiError(RuntimeError):
    """The API answered with an error status."""


class DagRunFailed(AssertionError):
    """A DAG run ended in a state other than the one expected (or timed out)."""


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.username, self.password, self.timeout = username, password, timeout
        self.session = requests.Session()
        self._token: str | None = None

    # --- plumbing ---------------------------------------------------------------------

    def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            response = self.session.post(f"{self.base_url}/auth/token", timeout=self.timeout,
                                         json={"username": self.username, "password": self.password})
            if response.status_code not in (200, 201):
                raise AirflowApiError(f"POST /auth/token: HTTP {response.status_code}: {response.text[:500]}")
            self._token = response.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}/api/v2/{path.lstrip('/')}"
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.token(refresh=attempt == 2)}", **kwargs.pop("headers", {})}
            response = self.session.request(method, url, headers=headers, **kwargs)
            if response.status_code != 401:
                break
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {path}: HTTP {response.status_code}: {response.text[:1000]}")
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def fetch(self, url: str, **kwargs: Any) -> requests.Response:
        """GET any api-server URL (a plugin's page, say) with the login's token; the response, whatever its status."""
        kwargs.setdefault("timeout", self.timeout)
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return self.session.get(url if "://" in url else f"{self.base_url}/{url.lstrip('/')}", headers=headers,
                                **kwargs)

    # --- API ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        response = self.session.get(f"{self.base_url}/api/v2/monitor/health", timeout=self.timeout)
        response.raise_for_status()
        return response.json()

    def import_errors(self) -> list[dict[str, Any]]:
        return self.get("importErrors")["import_errors"]

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        try:
            return self.get(f"dags/{quote(dag_id)}")
        except AirflowApiError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def wait_for_dag(self, dag_id: str, timeout: float = 120, poll: float = 1) -> dict[str, Any]:
        """Wait until the dag-processor has parsed and stored `dag_id`; fail at once on an import error."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.dag(dag_id)
            if found is not None:
                return found
            errors = self.import_errors()
            if errors:
                raise AirflowApiError(f"DAG import errors: {json.dumps(errors, indent=2)[:4000]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG {dag_id} not parsed after {timeout:.0f}s")
            time.sleep(poll)

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self.request("PATCH", f"dags/{quote(dag_id)}", params={"update_mask": "is_paused"},
                            json={"is_paused": False}).json()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None,
                note: str | None = None) -> dict[str, Any]:
        """Start a manual run now (no logical date, as the UI's trigger does)."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        if note:
            body["note"] = note
        return self.request("POST", f"dags/{quote(dag_id)}/dagRuns", json=body).json()

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances")["task_instances"]

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of a task instance, oldest first: state, hostname (the worker that ran it), pid, times."""
        tries = self.get(f"dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task_id)}"
                         "/tries")["task_instances"]
        return sorted(tries, key=lambda t: t["try_number"])

    def task_log_entries(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[Any]:
        """The whole log of one try as Airflow stores it: one entry per line (a dict with timestamp, level, event
        and more; a plain string for a line not written through structured logging)."""
        return self.get(f"dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task_id)}"
                        f"/logs/{try_number}", full_content="true")["content"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The whole log of one try, as text lines ("timestamp level event key=value ...")."""
        return "\n".join(_log_line(entry) for entry in self.task_log_entries(dag_id, run_id, task_id, try_number))

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        return self.get(f"dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task_id)}"
                        f"/xcomEntries/{quote(key)}", deserialize="true")["value"]

    def links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str | None]:
        """The task's extra links (from operators and plugins), name -> URL."""
        return self.get(f"dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task_id)}"
                        "/links")["extra_links"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600, poll: float = 2,
                     expect: str = "success") -> dict[str, Any]:
        """Poll until the run finishes; raise DagRunFailed (with failed tasks' logs) unless it ends in `expect`."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in FINISHED:
                break
            if time.monotonic() > deadline:
                raise DagRunFailed(f"{dag_id} {run_id} still {run['state']} after {timeout:.0f}s\n"
                                   + self.describe(dag_id, run_id))
            time.sleep(poll)
        if run["state"] != expect:
            raise DagRunFailed(f"{dag_id} {run_id} ended {run['state']}, expected {expect}\n"
                               + self.describe(dag_id, run_id))
        return run

    def describe(self, dag_id: str, run_id: str, log_lines: int = 40) -> str:
        """Task states, and the tail of each failed task's log."""
        lines = []
        for ti in sorted(self.task_instances(dag_id, run_id), key=lambda t: t.get("start_date") or "~"):
            lines.append(f"  {ti['task_id']}: {ti['state']} (try {ti['try_number']}, {ti.get('duration')}s)")
            if ti["state"] in ("failed", "up_for_retry") and ti["try_number"]:
                log = self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"]).splitlines()
                lines += [f"    | {line}" for line in log[-log_lines:]]
        return "\n".join(lines)


def _log_line(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    entry = dict(entry)
    error = entry.pop("error_detail", None)
    head = " ".join(str(entry.pop(k)) for k in ("timestamp", "level", "event") if entry.get(k) is not None)
    extra = " ".join(f"{k}={v}" for k, v in entry.items() if k not in ("timestamp", "level", "event"))
    line = f"{head} {extra}".rstrip()
    return "\n".join([line, *_error_lines(error)]) if error else line


def _error_lines(detail: Any) -> list[str]:
    """A task exception (the log entry's `error_detail`) as readable lines: last frames, then type: message."""
    lines = []
    for exc in detail if isinstance(detail, list) else []:
        if not isinstance(exc, dict):
            continue
        for frame in (exc.get("frames") or [])[-3:]:
            lines.append(f'  File "{frame.get("filename")}", line {frame.get("lineno")}, in {frame.get("name")}')
        lines += f"  {exc.get('exc_type')}: {exc.get('exc_value')}".splitlines()
    return lines or [f"  error_detail={detail}"]


def stack_login(env: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(API URL, user, password) of the stack scripts/airflow_stack.sh runs with these AIRFLOW_STACK_* settings:
    the password is AIRFLOW_STACK_ADMIN_PASSWORD, or the one `up` keeps in the stack home (the passwords file of
    the auth manager that AIRFLOW_STACK_AUTH names)."""
    from scripts.stack_settings import Settings

    s = Settings.from_env(os.environ if env is None else env)
    password = s.admin_password or json.loads(Path(s.passwords_file).read_text())[s.admin_user]
    return s.api_url, s.admin_user, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trigger a DAG on a running stack and wait for it.")
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}", help="run configuration (JSON)")
    parser.add_argument("--home", help="the stack home (default: AIRFLOW_STACK_HOME, else airflow_home/)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    url, user, password = stack_login({**os.environ, **({"AIRFLOW_STACK_HOME": args.home} if args.home else {})})
    client = AirflowClient(url, user, password)
    client.wait_for_dag(args.dag_id)
    client.unpause(args.dag_id)
    started = time.monotonic()
    run = client.trigger(args.dag_id, conf=json.loads(args.conf))
    print(f"triggered {args.dag_id} run {run['dag_run_id']}", flush=True)
    try:
        client.wait_for_run(args.dag_id, run["dag_run_id"], timeout=args.timeout)
    except DagRunFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"success in {time.monotonic() - started:.1f}s")
    print(client.describe(args.dag_id, run["dag_run_id"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
