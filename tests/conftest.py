"""Fixtures shared by every test tier, the check that keeps `-m "not integration"` free of processes, and the
hooks that spread the suite over pytest-xdist workers and gather their figures.

Helpers (paths, ports, bundles, servers, stacks) are in tests/support/.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support import session_report
from tests.support.distribution import StackScheduling
from tests.support.project import CONFIG_DIR, outputs_env, small_leakage_budget
from tests.support.project import edit_yaml as edit_yaml_file
from tests.support.servers import aws_test_credentials, moto_server
from tests.support.tiers import unmarked_process_tests, usage_error

pytest_plugins = ["pytester"]  # tests/test_tiers.py runs pytest on deliberately broken test files


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every collected test that starts a process must be marked integration (tests/support/tiers.py)."""
    unmarked = unmarked_process_tests(items)
    if unmarked:
        raise usage_error(unmarked)


@pytest.hookimpl(trylast=True)  # after the session-scoped stacks have stopped, so their shutdown times are in
def pytest_sessionfinish(session: pytest.Session) -> None:
    session_report.hand_over(session.config)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hooks, called on the controller
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> StackScheduling:
    return StackScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any) -> None:
    session_report.receive(node)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    session_report.write(terminalreporter)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private copy of include/config that a test may edit (with a small leakage budget, tests/support/project.py)."""
    target = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, target)
    small_leakage_budget(target)
    return target


@pytest.fixture
def edit_yaml() -> Callable[[Path, Callable[[dict[str, Any]], None]], None]:
    """Load a YAML file, let the test change the data, write it back."""
    return edit_yaml_file


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Send artifacts, the MLflow store and the local model store to a temp dir."""
    root = tmp_path / "outputs"
    for name, value in outputs_env(root).items():
        monkeypatch.setenv(name, value)
    for name in ("MLOPS_SOURCE_URI", "MLOPS_CONFIG_DIR", "MLFLOW_TRACKING_URI", "MLOPS_DEPLOY_TARGET",
                 "MLOPS_S3_BUCKET", "SERVING_URL", "SERVING_MODEL_STORE"):
        monkeypatch.delenv(name, raising=False)
    root.mkdir(parents=True)
    return root


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto server on loopback standing in for S3 (AWS is the one thing tests cannot reach)."""
    with aws_test_credentials(), moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint
