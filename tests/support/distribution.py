"""How `make test` spreads the suite over pytest-xdist workers.

A unit of work goes to one worker whole. The tests on the embedded Airflow stack (`tests/dag_runs/`, whose
conftest.py starts it) are one unit, and the tests on the production topology (`tests/topology/`) another, so each
stack starts once per session, as in a single process; every other test file is a unit of its own, so its
module-scoped servers start once too. The two stack units are handed out first: they are the longest, and a
long unit started last would leave the other workers idle at the end.

(pytest-xdist's `--dist loadgroup` with `xdist_group` marks would say the same, but it does not group under pytest
9.2: it renames node ids through a field pytest no longer reads, pytest-dev/pytest-xdist#1386.)
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling

# Folders whose tests share a session-wide stack, longest first.
SHARED_STACKS = ("tests/dag_runs", "tests/topology")


def unit_of(nodeid: str) -> str:
    """The unit a test runs in: its stack's folder, or its file."""
    path = nodeid.split("::", 1)[0]
    for folder in SHARED_STACKS:
        if path.startswith(folder + "/"):
            return folder
    return path


class StackScheduling(LoadScopeScheduling):
    """xdist's load-by-scope scheduling with unit_of as the scope and the stack units handed out first."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def _assign_work_unit(self, node: Any) -> None:
        for folder in reversed(SHARED_STACKS):
            if folder in self.workqueue:
                self.workqueue.move_to_end(folder, last=False)
        super()._assign_work_unit(node)
