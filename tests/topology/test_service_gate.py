"""Without PostgreSQL, Redis or docker-compose the topology tests skip and say why; under CI=true they fail.

Each case runs one topology test in a child pytest with the service made unreachable (a closed
port, or a PATH without docker-compose) and reads the child's verdict.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.network import free_port
from tests.support.project import REPO

pytestmark = pytest.mark.integration  # a child pytest per case

log = logging.getLogger(__name__)

CASES = {
    # service: (environment that hides it, the test to run, the reason the child must give)
    # Both hidden, so the verdict holds on any machine; Redis is checked first (conftest's celery_stack).
    "redis+postgres": ({"TOPOLOGY_POSTGRES_DSN": "postgresql://postgres@127.0.0.1:{port}/postgres",
                        "TOPOLOGY_REDIS_URL": "redis://127.0.0.1:{port}"},
                       "tests/topology/test_celery_topology.py", "Redis is not reachable at 127.0.0.1:{port}"),
    "docker-compose": ({"PATH": str(Path(sys.executable).parent)},
                       "tests/topology/test_compose.py::test_services_and_commands",
                       "docker-compose is not installed"),
}


def run_child(test: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", test, "-q", "-rsf", "-p", "no:cacheprovider"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("service", sorted(CASES))
@pytest.mark.parametrize("ci", [False, True], ids=["developer", "CI"])
def test_missing_service_is_a_visible_skip_or_a_ci_failure(service: str, ci: bool) -> None:
    hide, test, reason = CASES[service]
    port = str(free_port())  # bound and released at once: nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({k: v.format(port=port) for k, v in hide.items()})
    if ci:
        env["CI"] = "true"
    child = run_child(test, env)
    output = child.stdout + child.stderr
    assert reason.format(port=port) in output, output[-3000:]
    verdict = output.strip().splitlines()[-1]  # e.g. "2 skipped in 1.2s", "1 failed in 0.9s", "2 errors in 1.0s"
    if ci:
        assert child.returncode == 1 and "CI=true: a missing service is a failure" in output, output[-3000:]
        assert re.search(r"\d+ (failed|errors?)\b", verdict) and "passed" not in verdict and "skipped" not in verdict
    else:
        assert child.returncode == 0, output[-3000:]
        assert re.fullmatch(r"\d+ skipped in .*", verdict), verdict
        assert "SKIPPED" in output  # -rs lists each skip with its reason
