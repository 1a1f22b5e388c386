#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume: the MLflow tracking
# server's database beside Airflow's (POSTGRES_DB), owned by the same user.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=db="$MLFLOW_DB_NAME" <<'SQL'
CREATE DATABASE :"db";
SQL
