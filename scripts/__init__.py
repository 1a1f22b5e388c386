"""Operational helpers: the local Airflow stack (airflow_stack.sh), its REST client, `make demo`."""
