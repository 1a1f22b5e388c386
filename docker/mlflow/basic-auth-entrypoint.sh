#!/usr/bin/env bash
# The mlflow service's entrypoint (docker-compose.yaml): writes the config of MLflow's basic-auth app to
# MLFLOW_AUTH_CONFIG_PATH, then runs the service's command (`mlflow server --app-name basic-auth ...`).
# The config names the app's user store, MLFLOW_AUTH_DATABASE_URI (it holds the PostgreSQL password, so
# the file is private to the container's user and never part of the image). The admin comes from
# MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD, which MLflow reads itself.
set -euo pipefail
: "${MLFLOW_AUTH_CONFIG_PATH:?}" "${MLFLOW_AUTH_DATABASE_URI:?}"
umask 077
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
python - <<'PY'
import os

uri = os.environ["MLFLOW_AUTH_DATABASE_URI"].replace("%", "%%")  # configparser reads %% as %
with open(os.environ["MLFLOW_AUTH_CONFIG_PATH"], "w") as config:
    config.write(
        "[mlflow]\n"
        "# a logged-in user may read what no permission of theirs says otherwise about\n"
        "default_permission = READ\n"
        f"database_uri = {uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
PY
unset MLFLOW_AUTH_DATABASE_URI
exec "$@"
