"""Reports each DAG file's parse time at the end of the run."""

from __future__ import annotations

import pytest

_PARSE_TIMES: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="session")
def parse_times() -> dict[str, tuple[float, float]]:
    """DAG file name -> (parse seconds, seconds importing airflow.sdk first); filled by the tests."""
    return _PARSE_TIMES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _PARSE_TIMES:
        terminalreporter.write_sep("-", "DAG parse times")
        for name, (parse, airflow) in sorted(_PARSE_TIMES.items()):
            terminalreporter.write_line(f"{name}: {parse:.3f}s (after {airflow:.2f}s importing airflow.sdk)")
