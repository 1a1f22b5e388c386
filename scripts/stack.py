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

The code: scripts/stack_settings.py (Settings and what they make), scripts/stack_processes.py (pid files, process
trees, signals, through psutil), scripts/stack_commands.py (up, down, status); this module is the command line.
"""

from __future__ import annotations

import os
import sys

from scripts.stack_commands import down, status, up
from scripts.stack_processes import lock
from scripts.stack_settings import PROG, Settings, StackError, env_lines, prepare


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
