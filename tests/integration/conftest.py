"""The session's real Airflow 3 stack (tests/support/stacks.py), and its timings at the end of the run."""

from __future__ import annotations

import sys
from typing import Iterator

import pytest

from tests.support.stacks import AIRFLOW_TIMINGS, AirflowStack, running_airflow_stack


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    if sys.platform != "linux":
        pytest.skip("scripts/airflow_stack.sh needs Linux (/proc, setsid)")
    with running_airflow_stack(tmp_path_factory.mktemp("airflow_stack")) as stack:
        yield stack


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if AIRFLOW_TIMINGS:
        terminalreporter.write_sep("-", "airflow stack timings")
        for name, seconds in AIRFLOW_TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")
