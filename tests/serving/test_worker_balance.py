"""New keep-alive connections spread over the gunicorn workers (serving/workers.py), not onto whichever wakes first."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.network import wait_until
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration  # a real gunicorn server

CLIENTS = 16


def _pid_of_new_connection(port: int) -> tuple[http.client.HTTPConnection, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health")
    return connection, json.loads(connection.getresponse().read())["pid"]


def _pid_of_one_request(port: int) -> int:
    connection, pid = _pid_of_new_connection(port)
    connection.close()
    return pid


def test_a_burst_of_keep_alive_connections_is_shared_evenly(server: PredictionServer) -> None:
    # Both workers up (each loads and checks the model first), each taking new connections.
    wait_until(lambda: len({_pid_of_one_request(server.port) for _ in range(8)}) == 2)
    # All clients connect at once and stay connected, as a load balancer's pool or a load generator does;
    # every later request of a connection goes to the worker that accepted it.
    with ThreadPoolExecutor(CLIENTS) as pool:
        opened = list(pool.map(lambda _: _pid_of_new_connection(server.port), range(CLIENTS)))
    try:
        per_worker = Counter(pid for _, pid in opened)
        # Even up to the connections the probes above just closed, which a worker may not have noticed yet
        # (plain gthread here: all 16 on one worker).
        assert len(per_worker) == 2 and max(per_worker.values()) <= CLIENTS * 5 // 8, per_worker
        # The connections stay with their workers: the next request on each answers from the same pid.
        for connection, pid in opened:
            connection.request("GET", "/health")
            assert json.loads(connection.getresponse().read())["pid"] == pid
    finally:
        for connection, _ in opened:
            connection.close()
