"""Figures a test session prints at its end: the stacks' timings and the DAG files' parse times.

Tests and fixtures fill the dicts below in whichever process runs them; under pytest-xdist (`make test`), each
worker hands its lines to the controller when it finishes (tests/conftest.py), which prints them with the worker's
name, so nothing measured on a worker is lost.
"""

from __future__ import annotations

from typing import Any

import pytest

AIRFLOW_TIMINGS: dict[str, float] = {}  # the embedded Airflow stack (tests/support/stacks.py)
CELERY_TIMINGS: dict[str, float] = {}  # the production topology (tests/support/stacks.py, tests/topology)
PARSE_TIMES: dict[str, tuple[float, float]] = {}  # DAG file -> (parse s, s importing airflow.sdk first)
_KEY = "session_report"
_FROM_WORKERS: dict[str, dict[str, list[str]]] = {}  # worker id -> section -> lines


def _sections() -> dict[str, list[str]]:
    """This process's figures, as the lines to print under each section's title."""
    sections = {
        "airflow stack timings": [f"{name}: {seconds:.1f}" for name, seconds in AIRFLOW_TIMINGS.items()],
        "production topology timings": [f"{name}: {seconds:.1f}" for name, seconds in CELERY_TIMINGS.items()],
        "DAG parse times": [f"{name}: {parse:.3f}s (after {airflow:.2f}s importing airflow.sdk)"
                            for name, (parse, airflow) in sorted(PARSE_TIMES.items())],
    }
    return {title: lines for title, lines in sections.items() if lines}


def hand_over(config: pytest.Config) -> None:
    """On an xdist worker: pass this worker's figures to the controller (after the session's teardown)."""
    output: Any = getattr(config, "workeroutput", None)
    if output is not None:
        output[_KEY] = _sections()


def receive(node: Any) -> None:
    """On the controller: keep what a finished worker handed over."""
    _FROM_WORKERS[node.gateway.id] = getattr(node, "workeroutput", {}).get(_KEY, {})


def write(reporter: pytest.TerminalReporter) -> None:
    gathered: dict[str, list[str]] = {}
    for title, lines in _sections().items():
        gathered.setdefault(title, []).extend(lines)
    for worker, sections in sorted(_FROM_WORKERS.items()):
        for title, lines in sections.items():
            gathered.setdefault(title, []).extend(f"[{worker}] {line}" for line in lines)
    for title, lines in gathered.items():
        reporter.write_sep("-", title)
        for line in lines:
            reporter.write_line(line)
