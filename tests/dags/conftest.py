"""Reports each DAG file's parse time at the end of the run."""

from __future__ import annotations

import pytest

from tests.dags.test_dag_integrity import PARSE_TIMES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if PARSE_TIMES:
        terminalreporter.write_sep("-", "DAG parse times")
        for name, (parse, airflow) in sorted(PARSE_TIMES.items()):
            terminalreporter.write_line(f"{name}: {parse:.3f}s (after {airflow:.2f}s importing airflow.sdk)")
