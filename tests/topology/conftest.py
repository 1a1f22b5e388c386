"""The production topology on this machine's own services: PostgreSQL, Redis, a moto S3 server.

`celery_stack` is scripts/airflow_stack.sh in celery mode (tests/support/stacks.py says how). A missing service
skips these tests with the reason, except under CI=true, where it fails them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterator
from unittest import mock

import pytest

from tests.support.stacks import (
    CeleryStack,
    RedisBroker,
    create_bucket,
    fresh_postgres_databases,
    fresh_redis_broker,
    running_celery_stack,
)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[dict[str, str]]:
    """Fresh databases: {"airflow": "airflow_test_<token>", "mlflow": ..., "tuning": ...} (tuning: the Optuna study)."""
    with fresh_postgres_databases() as names:
        yield names


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[RedisBroker]:
    """A Redis DB number and key prefix of this session's own; its keys are deleted afterwards."""
    with fresh_redis_broker() as broker:
        yield broker


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    """A bucket on the session's moto server (tests/conftest.py) for the MLflow artifacts."""
    return create_bucket(s3_endpoint)


@pytest.fixture(scope="session")
def celery_stack(tmp_path_factory: pytest.TempPathFactory, redis_broker: RedisBroker,
                 postgres_databases: dict[str, str], s3_endpoint: str, s3_bucket: str) -> Iterator[CeleryStack]:
    if sys.platform != "linux":
        pytest.skip("scripts/airflow_stack.sh needs Linux (/proc, setsid)")
    with running_celery_stack(tmp_path_factory.mktemp("celery_stack"), postgres_databases, redis_broker,
                              s3_endpoint, s3_bucket) as stack:
        # The tests' own MLflow clients (tests/support/registry.py) log in as the tasks do: MLflow's variables.
        username, password = stack.mlflow_login
        with mock.patch.dict(os.environ, MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password):
            yield stack


# The one ml_pipeline run most topology tests read (each pipeline run costs minutes on 2 cores): elasticnet, its
# search of TUNED_TRIALS trials spread over both Celery workers (tune_workers), promoted, so it is the champion that
# ml_batch_predict scores with.
TUNED_TRIALS, TUNED_WORKERS = 16, 2


@pytest.fixture(scope="session")
def tuned_run(celery_stack: CeleryStack) -> str:
    """The id of a successful ml_pipeline run on the stack, tuned on both workers, its version the champion."""
    client = celery_stack.client
    started = time.monotonic()
    client.wait_for_dag("ml_pipeline", timeout=120)
    client.unpause("ml_pipeline")
    run_id = client.trigger("ml_pipeline", conf={"model_family": "elasticnet", "tune_trials": TUNED_TRIALS,
                                                 "tune_workers": TUNED_WORKERS, "force_promote": True},
                            note="tests/topology: tuned on both workers")["dag_run_id"]
    client.wait_for_run("ml_pipeline", run_id, timeout=420)
    celery_stack.timings["ml_pipeline tuned on 2 workers, trigger to success (s)"] = time.monotonic() - started
    return run_id

