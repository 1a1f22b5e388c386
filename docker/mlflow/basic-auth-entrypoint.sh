#!/usr/bin/env bash
# The mlflow service's entrypoint (docker-compose.yaml): writes the config of MLflow's basic-auth app to
# MLFLOW_AUTH_CONFIG_PATH, then runs the service's command (`mlflow server --app-name basic-auth ...`).
# The config names the app's user store, MLFLOW_AUTH_DATABASE_URI (it holds the PostgreSQL password, so
# the file is private to the container's user and never part of the image). The admin comes from
# MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, which MLflow reads itself. Only the admin (the
# workers' login) and the users in MLFLOW_REGISTRY_WRITERS may write to the model registry; the check is
# scripts/mlflow_auth.py (in the image under /opt/airflow, on its PYTHONPATH).
set -euo pipefail
: "${MLFLOW_AUTH_CONFIG_PATH:?}" "${MLFLOW_AUTH_DATABASE_URI:?}"
umask 077
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
python - <<'PY'
import os

uri = os.environ["MLFLOW_AUTH_DATABASE_URI"].replace("%", "%%")  # configparser reads %% as %
# The admin (the workers' login) and MLFLOW_REGISTRY_WRITERS: who may write to the model registry.
writers = " ".join(name for name in (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", ""),
                                     *os.environ.get("MLFLOW_REGISTRY_WRITERS", "").replace(",", " ").split())
                   if name).replace("%", "%%")
with open(os.environ["MLFLOW_AUTH_CONFIG_PATH"], "w") as config:
    config.write(
        "[mlflow]\n"
        "# a logged-in user reads or writes only what a grant of theirs allows (admins: everything)\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {uri}\n"
        "# MLflow's login, then only these users may create, alias, version, rename or delete registered models\n"
        "authorization_function = scripts.mlflow_auth:authenticate_request\n"
        f"registry_writers = {writers}\n"
    )
PY
unset MLFLOW_AUTH_DATABASE_URI
exec "$@"
