"""Helpers of the production-topology tests (tests/topology/): its PostgreSQL databases read directly, and a Celery
worker killed as if its machine died."""

from __future__ import annotations

import time
from typing import Any

import psutil

from tests.support.stacks import pg_url


def query(database: str, sql: str, *params: Any) -> list[tuple]:
    """Rows straight from a PostgreSQL database of the session (not through Airflow or MLflow)."""
    import psycopg2

    with psycopg2.connect(pg_url(database)) as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    conn.close()
    return rows


def kill_worker(pid: int) -> set[int]:
    """SIGKILL a Celery worker and every process below it, task processes included, as if its machine died.

    The whole tree is stopped first, so that nothing forks, retries or reaps between the look-up and the kill.
    """
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        process.suspend()
    tree = [root, *root.children(recursive=True)]
    for process in tree:
        process.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p.pid for p in tree if _alive(p)], "processes of the killed worker survived SIGKILL"
    return {p.pid for p in tree}


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
