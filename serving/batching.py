"""Adaptive micro-batching of concurrent small requests within one worker.

A tree ensemble costs nearly the same per predict call for 1 row as for 100,
so requests that arrive while a batch is being predicted are answered together
by the next call. A request that finds nothing predicting and nobody waiting
predicts at once in its own thread (no hand-off, no wait); one that arrives
while a prediction runs queues for the batcher thread, which waits at most
`max_wait` for more company. Under heavy load batches fill up on their own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

import numpy as np

from serving.inputs import Batch
from serving.model import LoadedModel, Prediction

log = logging.getLogger(__name__)


class StaleContract(Exception):
    """The model changed to one with other inputs between validation and prediction."""


class _Pending:
    __slots__ = ("batch", "done", "result", "model", "error")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.result: Prediction | None = None
        self.model: LoadedModel | None = None
        self.error: BaseException | None = None


class MicroBatcher:
    def __init__(self, current_model: Callable[[], LoadedModel | None], max_rows: int, max_wait: float,
                 on_batch: Callable[[int], None] = lambda rows: None) -> None:
        self._current_model = current_model
        self.max_rows, self.max_wait = max_rows, max_wait
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        # Held while a batch is being collected or predicted, by the batcher thread or a request predicting alone.
        self._busy = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def predict(self, batch: Batch, timeout: float = 30.0) -> tuple[LoadedModel, Prediction]:
        """Predict `batch` together with whatever else is waiting; returns the model that answered."""
        pending = _Pending(batch)
        if self._queue.empty() and self._busy.acquire(blocking=False):
            try:  # nothing predicting, nobody waiting: the hand-off to the batcher thread would only add latency
                self._run([pending], batch.n_rows)
            finally:
                self._busy.release()
        else:
            self._queue.put(pending)
            if not pending.done.wait(timeout):
                raise TimeoutError(f"no prediction within {timeout}s")
        if pending.error is not None:
            raise pending.error
        assert pending.model is not None and pending.result is not None
        return pending.model, pending.result

    def _loop(self) -> None:
        while True:
            group = [self._queue.get()]
            with self._busy:  # after a request predicting alone; arrivals meanwhile queue and join this batch
                rows = group[0].batch.n_rows
                deadline = time.monotonic() + self.max_wait
                while rows < self.max_rows:
                    try:
                        remaining = deadline - time.monotonic()
                        nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    group.append(nxt)
                    rows += nxt.batch.n_rows
                self._run(group, rows)

    def _run(self, group: list[_Pending], rows: int) -> None:
        model = self._current_model()  # one model answers the whole group, so versions never mix in a batch
        if model is not None:
            stale = [p for p in group if p.batch.contract_hash != model.contract.hash]
            for p in stale:
                p.error = StaleContract()
                p.done.set()
            group = [p for p in group if p not in stale]
            rows = sum(p.batch.n_rows for p in group)
        if not group:
            return
        try:
            if model is None:
                raise RuntimeError("no model loaded")
            columns = {n: np.concatenate([p.batch.columns[n] for p in group]) for n in model.contract.names}
            prediction = model.predict(columns)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for p in group:
                p.error = exc
                p.done.set()
            return
        self._on_batch(rows)
        start = 0
        for p in group:
            end = start + p.batch.n_rows
            probs = prediction.probabilities[start:end] if prediction.probabilities is not None else None
            p.model, p.result = model, Prediction(prediction.values[start:end], probs)
            p.done.set()
            start = end
