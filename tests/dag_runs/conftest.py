"""The session's real Airflow 3 stack (tests/support/stacks.py; its timings: tests/support/session_report.py)."""

from __future__ import annotations

import sys
from typing import Iterator

import pytest

from tests.support.stacks import AirflowStack, running_airflow_stack


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    if sys.platform != "linux":
        pytest.skip("scripts/airflow_stack.sh needs Linux (/proc, setsid)")
    with running_airflow_stack(tmp_path_factory.mktemp("airflow_stack")) as stack:
        yield stack

