"""scripts/stack_processes.py on real processes (a few `sleep`s): what `down` finds below a component and by the
stack's marker, and that a zombie no longer counts as running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from scripts.stack_processes import descendants, kill, marked_pids, start_time

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process groups and sessions as on Linux")]
T = TypeVar("T")


def until(condition: Callable[[], T], seconds: float = 10.0) -> T:
    """condition()'s first truthy value, or its last one after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def tree_of_three(root: int) -> dict[int, int]:
    found = descendants(root)
    return found if len(found) == 3 else {}


def test_descendants_across_process_groups() -> None:
    """A component's processes below it, also those in a session of their own (as a LocalExecutor task's)."""
    tree = subprocess.Popen(["sh", "-c", "sleep 60 & setsid sh -c 'sleep 60 & wait' & wait"], start_new_session=True)
    try:
        found = until(lambda: tree_of_three(tree.pid))
        assert found, descendants(tree.pid)
        groups = sorted(set(found.values()))
        assert tree.pid in groups and len(groups) == 2  # the component's group, and the setsid one
        own = next(group for group in groups if group != tree.pid)
        assert own in found and list(found.values()).count(own) == 2  # the inner sh leads its group, with its sleep
    finally:
        kill([tree.pid, *set(descendants(tree.pid).values())], signal.SIGKILL, group=True)
        tree.wait()
    assert descendants(tree.pid) == {} and descendants(4194305) == {}


def test_marked_processes_are_found_by_their_environment(tmp_path: Path) -> None:
    marked = subprocess.Popen(["sleep", "60"], env={**os.environ, "AIRFLOW_STACK_ID": str(tmp_path)})
    try:
        assert until(lambda: marked.pid in marked_pids(str(tmp_path)))
        assert marked.pid not in marked_pids(str(tmp_path / "other"))
        assert os.getpid() not in marked_pids(os.environ.get("AIRFLOW_STACK_ID", "none"))  # never `down` itself
    finally:
        marked.kill()
        marked.wait()
    assert marked.pid not in marked_pids(str(tmp_path))


def test_a_zombie_has_no_start_time() -> None:
    child = subprocess.Popen(["sleep", "60"])
    assert start_time(child.pid)
    child.kill()  # not reaped yet: a zombie
    try:
        assert until(lambda: start_time(child.pid) is None)
    finally:
        child.wait()
