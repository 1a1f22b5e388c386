#!/usr/bin/env bash
# The local Airflow stack (make up / make down): scripts/stack.py, run by the venv's Python from the repo root.
#   scripts/airflow_stack.sh up|down|status|env    settings (AIRFLOW_STACK_*): scripts/stack.py, class Settings
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${AIRFLOW_STACK_VENV:-$PWD/.venv}/bin/python"
[[ -x "$py" ]] || { echo "airflow_stack: no Python at $py; run 'make venv' first (or set AIRFLOW_STACK_VENV)" >&2; exit 1; }
exec "$py" -m scripts.stack "$@"
