"""The DAG tests' fixtures."""

from __future__ import annotations

import pytest

from tests.support.session_report import PARSE_TIMES


@pytest.fixture(scope="session")
def parse_times() -> dict[str, tuple[float, float]]:
    """DAG file name -> (parse seconds, seconds importing airflow.sdk first); filled by the tests, printed at the end
    of the session (tests/support/session_report.py)."""
    return PARSE_TIMES
