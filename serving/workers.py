"""gunicorn's gthread worker, taking new connections only while it holds no more of them than any other worker.

gthread workers all wait on the one listening socket and the first to wake accepts; a burst of new keep-alive
connections (a load balancer's pool, wrk's clients) can then land mostly on one worker, which serves them all
while the others idle (docs/benchmarks.md: 6,490 of 7,000 requests on one of two workers). `--reuse-port` is no
remedy: gunicorn's workers still share one socket, and SO_REUSEPORT lets another process bind the port unseen.

Here each worker publishes its open connection count in a shared array the master creates before forking
(serving/gunicorn.conf.py: on_starting, pre_fork, child_exit), and stops listening while it holds more
connections than the least loaded worker accepting; a worker counts from the moment it runs (its model loaded)
until it stops (exit, reload).
"""

from __future__ import annotations

import multiprocessing.sharedctypes
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from serving.request_heads import HeadGate

SLOTS = 64  # workers at once, old ones finishing during a reload included; beyond that a worker is not balanced
GONE = -1
RECHECK_S = 0.002  # how often a worker whose accepts balancing holds off looks again
_counts: Any = None  # the shared array: one open-connection count per slot, GONE where no worker accepts


def create_counts() -> None:
    """In the master, before any worker is forked."""
    global _counts
    _counts = multiprocessing.sharedctypes.RawArray("l", [GONE] * SLOTS)


def assign_slot(worker: Any, others: list[Any]) -> None:
    """In the master, before forking `worker`: the first slot no live worker holds."""
    taken = {getattr(w, "slot", None) for w in others}
    worker.slot = next((i for i in range(SLOTS) if i not in taken), None)
    _publish(worker.slot, GONE)  # until it runs: a worker still loading its model must not hold the others back


def release_slot(worker: Any) -> None:
    """In the master, when a worker has exited."""
    _publish(getattr(worker, "slot", None), GONE)


def _publish(slot: int | None, value: int) -> None:
    if _counts is not None and slot is not None:
        _counts[slot] = value


class BalancedThreadWorker(HeadGate, ThreadWorker):
    """ThreadWorker whose connection cap is, at any moment, what the least loaded worker holds; and whose threads
    get a connection only with its request head read (serving/request_heads.py)."""

    slot: int | None = None
    _running = False

    def run(self) -> None:
        self._running = True
        _publish(self.slot, self._nr_conns)
        super().run()

    # gthread reads both on every turn of its loop (`can_accept = nr_conns < worker_connections`) and changes
    # nr_conns on accept and close: properties publish the count and lower the cap, no gthread code is copied.
    @property
    def nr_conns(self) -> int:
        return self._nr_conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self._nr_conns = value
        if self._running and self.alive:
            _publish(self.slot, value)

    @property
    def worker_connections(self) -> int:
        if _counts is None or self.slot is None:
            return self._worker_connections
        least = min((c for c in _counts if c != GONE), default=self._nr_conns)
        return self._worker_connections if self._nr_conns <= least else self._nr_conns

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._worker_connections = value

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # gthread waits up to 1 s for an event. While balancing holds this worker's accepts off, no event of its
        # own tells it that another worker caught up: look again every few milliseconds instead.
        held = not self._accepting and self._nr_conns < self._worker_connections
        super().wait_for_and_dispatch_events(min(timeout, RECHECK_S) if held else timeout)

    @property
    def alive(self) -> bool:
        return getattr(self, "_alive", False)

    @alive.setter
    def alive(self, value: bool) -> None:
        self._alive = value
        if not value:  # stopping: it accepts no more, so others must not wait for it to catch up
            _publish(self.slot, GONE)
