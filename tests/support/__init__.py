"""Helpers the test tiers share; fixtures stay in the conftest.py files, which import what they need from here.

- `project`: where things are (REPO, CONFIG_DIR, WINE_CSV), outputs sent to a temp dir, `python main.py` runs.
- `network`: free loopback ports, waiting for an HTTP answer or a condition, reading JSON.
- `bundles`: toy model bundles trained the way the pipeline trains, and model stores made of them.
- `servers`: real processes on loopback: a gunicorn prediction server, a client polling it, a moto server.
- `registry`: an MLflow registry read through a tracking server (versions, the champion, a pipeline run's runs).
- `stacks`: real Airflow stacks (scripts/airflow_stack.sh): LocalExecutor, and CeleryExecutor on PostgreSQL + Redis.
- `frames`: tiny in-memory datasets and stage configs for the component tests of tests/ml.
- `assets`: the EC2 host assets of serving/deploy/ (user data, systemd unit, IAM policies) and their parsers.
- `tiers`: which tests start a process and must be marked integration (the check in tests/conftest.py).
"""
