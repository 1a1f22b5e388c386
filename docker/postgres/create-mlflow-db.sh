#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume: the MLflow tracking
# server's database (MLFLOW_DB_NAME) and its basic-auth app's user store (MLFLOW_AUTH_DB_NAME)
# beside Airflow's (POSTGRES_DB), owned by the same user. A volume initialised before the auth
# store existed needs it made once by hand:
#   docker compose exec postgres createdb -U "$POSTGRES_USER" mlflow_auth
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=db="$MLFLOW_DB_NAME" --set=auth_db="$MLFLOW_AUTH_DB_NAME" <<'SQL'
CREATE DATABASE :"db";
CREATE DATABASE :"auth_db";
SQL
