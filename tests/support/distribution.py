"""How `make test` spreads the suite over pytest-xdist workers (`--dist loadgroup`).

A test that shares a running stack with others goes where that stack runs: everything on the embedded Airflow
stack in one group, everything on the production topology in another, so each starts once per session as before.
Any other test that starts processes stays with the rest of its module (its module-scoped servers start once);
the fast tests go wherever a worker is free.
"""

from __future__ import annotations

from typing import Iterable

import pytest

from tests.support.tiers import MARK

# A session-wide stack -> the fixtures through which a test uses it.
SHARED_STACKS = {
    "airflow_stack": frozenset({"airflow_stack"}),
    "celery_stack": frozenset({"celery_stack", "postgres_databases", "redis_broker", "s3_bucket", "tuned_run"}),
}


def group_of(item: pytest.Item) -> str | None:
    """The xdist group `item` runs in: a shared stack's name, its module's path, or None (any worker)."""
    used = set(getattr(item, "fixturenames", ()))
    for stack, fixtures in SHARED_STACKS.items():
        if used & fixtures:
            return stack
    if item.get_closest_marker(MARK) is not None:
        return item.nodeid.split("::", 1)[0]
    return None


def assign_groups(items: Iterable[pytest.Item]) -> None:
    for item in items:
        group = group_of(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
