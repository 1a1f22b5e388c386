#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume: the tune stage's Optuna study database
# (OPTUNA_DB_NAME; MLOPS_TUNING_STORAGE of the Airflow services) beside Airflow's and MLflow's, owned by the same
# user. Its own database, as Optuna keeps an alembic_version table as Airflow and MLflow do. A volume initialised
# before it existed needs it made once by hand:
#   docker compose exec postgres createdb -U "$POSTGRES_USER" optuna
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" --set=db="$OPTUNA_DB_NAME" <<'SQL'
CREATE DATABASE :"db";
SQL
