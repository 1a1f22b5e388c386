"""The rule behind `-m "not integration"` (the fast tier): every test that starts a process is marked integration.

tests/conftest.py applies it at collection: a test that is not marked but uses a fixture that starts a process,
or lives in a module whose source starts one, stops the session with a UsageError naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pytest

MARK = "integration"
# Fixtures that start a process or need a running service (directly, or through the fixtures they use).
PROCESS_FIXTURES = frozenset({
    "s3_endpoint",  # a moto server (tests/conftest.py)
    "server",  # a gunicorn prediction server (tests/serving/conftest.py)
    "airflow_stack",  # scripts/airflow_stack.sh up (tests/dag_runs/conftest.py)
    "celery_stack", "postgres_databases", "redis_broker", "s3_bucket",  # tests/topology/conftest.py
})
# What a module's source says when it starts a process itself.
PROCESS_CALLS = ("subprocess", "Popen", "PredictionServer(", "run_main(", "webdriver", "moto_server(",
                 "running_airflow_stack(", "running_celery_stack(", "run_stack_script(")


def process_reasons(item: pytest.Item, sources: dict[Path, list[str]]) -> list[str]:
    """Why `item` starts a process: the process fixtures it uses, then what its module's source calls."""
    reasons = [f"fixture {name}" for name in sorted(PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())))]
    path = Path(item.path)
    if path not in sources:
        text = path.read_text(errors="replace") if path.is_file() and path.suffix == ".py" else ""
        sources[path] = [f"its module mentions {call!r}" for call in PROCESS_CALLS if call in text]
    return reasons + sources[path]


def unmarked_process_tests(items: Iterable[pytest.Item]) -> list[str]:
    """One line per collected test that starts a process but is not marked integration."""
    sources: dict[Path, list[str]] = {}
    found = []
    for item in items:
        if item.get_closest_marker(MARK) is None:
            reasons = process_reasons(item, sources)
            if reasons:
                found.append(f"{item.nodeid}: {'; '.join(reasons)}")
    return found


def usage_error(unmarked: list[str]) -> pytest.UsageError:
    return pytest.UsageError(
        f"{len(unmarked)} test(s) start a process but are not marked {MARK} (add `pytestmark = "
        f"pytest.mark.{MARK}` to the module, or @pytest.mark.{MARK} to the test; docs/architecture.md, Tests):\n  "
        + "\n  ".join(unmarked))
