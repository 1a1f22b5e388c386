"""The micro-batcher: a lone request predicts in its own thread; concurrent ones share predict calls, each
getting exactly its own rows back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np

from serving.batching import MicroBatcher
from serving.inputs import Batch
from serving.model import Prediction


class SlowDouble:
    """Predicts 2x per row, taking `seconds` per call whatever the rows; records the calls' sizes and threads."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.contract = SimpleNamespace(hash="h", names=("x",))
        self.seconds = seconds
        self.calls: list[tuple[int, str]] = []

    def predict(self, columns: dict[str, Any]) -> Prediction:
        time.sleep(self.seconds)
        self.calls.append((len(columns["x"]), threading.current_thread().name))
        return Prediction((columns["x"] * 2).tolist(), None)


def batch(*values: float) -> Batch:
    return Batch({"x": np.array(values, dtype=float)}, len(values), contract_hash="h")


def test_a_lone_request_predicts_in_its_own_thread() -> None:
    model = SlowDouble()
    batcher = MicroBatcher(lambda: model, max_rows=64, max_wait=0.05)
    started = time.monotonic()
    answered_by, prediction = batcher.predict(batch(1.0, 2.0))
    assert prediction.values == [2.0, 4.0] and answered_by is model
    assert model.calls == [(2, threading.current_thread().name)]
    assert time.monotonic() - started < 0.05  # no wait for company when nobody else is there


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    model = SlowDouble(seconds=0.02)
    batcher = MicroBatcher(lambda: model, max_rows=64, max_wait=0.005)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: batcher.predict(batch(float(i), float(i) + 0.5))[1].values, range(64)))
    assert results == [[2.0 * i, 2.0 * i + 1.0] for i in range(64)]
    assert sum(rows for rows, _ in model.calls) == 128
    assert len(model.calls) < 64  # some calls answered several requests
    assert max(rows for rows, _ in model.calls) <= 64 + 1  # a group stops growing at max_rows


def test_a_failure_reaches_every_request_of_the_batch() -> None:
    class Broken(SlowDouble):
        def predict(self, columns: dict[str, Any]) -> Prediction:
            time.sleep(0.01)
            raise RuntimeError("boom")

    batcher = MicroBatcher(lambda: Broken(), max_rows=64, max_wait=0.005)

    def call(_: int) -> str:
        try:
            batcher.predict(batch(1.0))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(16))) == ["boom"] * 16
