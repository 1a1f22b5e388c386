"""Releases: a champion and a candidate in one worker (serving/pointer.py names them, serving/model.py loads both).

Routing: a request's key is its X-Client-Key header (SERVING_STICKY_HEADER) when it has one, else its request id;
`in_share(key, share)` puts the first 8 bytes of sha256(key), read as an integer, over 2**64 and compares it with
the release's share. The same key always lands on the same side, in every worker and on every server.

- shadow: a request in the share is answered by the champion; the candidate scores the same rows afterwards, on
  the worker's scorer thread (never on the request path).
- canary: a request in the share is answered by the candidate; the champion scores the same rows on the scorer
  thread, so capture has both. A candidate that raises, or whose contract refuses rows the champion accepts, is
  counted as a candidate error and the champion answers instead: the client never sees the candidate fail.

The scorer's queue is bounded (SERVING_RELEASE_QUEUE requests): when it is full a pair is dropped and counted
(serving_release_shadow_dropped_total), never waited for. The scorer counts the second model's call under its role,
compares the two answers (serving_release_agreement, serving_release_pairs_total) and captures the pair, always.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from serving.capture import Answer, CaptureWriter, Pair
from serving.contract import Contract
from serving.inputs import Batch, InputError
from serving.metrics import ReleaseMetrics
from serving.model import LoadedModel, Prediction

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
SHADOW, CANARY = "shadow", "canary"
_SCALE = float(2 ** 64)
_STOP = object()
LOG_EVERY = 10.0  # seconds between two log lines about failing calls of one role

Validator = Callable[[Any, Contract, bool], Batch]  # (records, contract, from_text) -> validated rows


def routing_key(sticky: str | None, request_id: str) -> str:
    """What decides a request's side: the client's sticky key when it sent one, else the request id."""
    return sticky if sticky else request_id


def in_share(key: str, share: float) -> bool:
    """Whether `key` falls in the first `share` of the hash space: deterministic, uniform over keys."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / _SCALE < share


def other_role(role: str) -> str:
    return CANDIDATE if role == CHAMPION else CHAMPION


@dataclass(frozen=True)
class Scored:
    """A model's answer to a request: who answered, the rows as validated for it, the prediction."""

    model: LoadedModel
    batch: Batch
    prediction: Prediction


@dataclass(frozen=True)
class Job:
    """A request answered by `answered.model` (in role `role`) that `other` is to score off the request path."""

    request_id: str
    records: Any  # the rows as parsed: validated again when the other model's contract differs
    from_text: bool
    answered: Scored
    role: str
    other: LoadedModel


class Limited:
    """A log line at most every LOG_EVERY seconds (a failing candidate must not flood the log)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def error(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._last[key] = now
            log.error(message, *args)


_errors = Limited()


def candidate_answer(candidate: LoadedModel, records: Any, from_text: bool, validate: Validator,
                     metrics: ReleaseMetrics) -> tuple[Scored | None, str | None]:
    """The candidate's answer on the request path (canary), or None and why not: "input" when its contract refuses
    the rows (counted by the caller only if the champion takes them: else the input is the client's mistake),
    "exception" when it raised (counted here)."""
    try:
        batch = validate(records, candidate.contract, from_text)
    except InputError:
        return None, "input"
    started = time.perf_counter()
    try:
        prediction = checked(candidate.predict(batch.columns, batch.numeric), batch.n_rows)
    except Exception as exc:  # noqa: BLE001 - a failing candidate never fails the request: the champion answers
        metrics.error(CANDIDATE, "exception")
        _errors.error(CANDIDATE, "candidate %s failed a request (the champion answered it): %s: %s",
                      candidate.version, type(exc).__name__, exc)
        return None, "exception"
    metrics.ok(CANDIDATE, time.perf_counter() - started)
    return Scored(candidate, batch, prediction), None


def checked(prediction: Prediction, rows: int) -> Prediction:
    if len(prediction.values) != rows:
        raise ValueError(f"{len(prediction.values)} predictions for {rows} rows")
    return prediction


class Scorer:
    """The second scoring of a worker's paired requests, on a thread of its own: `submit` on request threads
    (never blocks), the scoring, the agreement figures and the pair's capture row on the scorer thread."""

    def __init__(self, validate: Validator, metrics: ReleaseMetrics, capture: CaptureWriter | None,
                 limit: int = 1024) -> None:
        self.validate, self.metrics, self.capture, self.limit = validate, metrics, capture, limit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # bounded by `limit` in submit
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="release-scorer", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue `job` unless `limit` requests already wait (then it is dropped, counted, and its answer captured
        alone as a sampled request). True when queued."""
        if self._closed or self._queue.qsize() >= self.limit:
            self.metrics.dropped.inc()
            self._capture(job, None)
            return False
        self._queue.put(job)  # qsize and put race only by the worker's threads: the bound is `limit` + threads
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued, then stop; later jobs are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("release scorer did not finish within %.0fs", timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            try:
                self.score(job)
            except Exception:  # noqa: BLE001 - the scorer must outlive any one request
                log.exception("release scorer error on request %s; carrying on", job.request_id)

    def score(self, job: Job) -> None:
        """Score the job's rows with the other model, count the call, compare the answers, capture the pair."""
        role, other = other_role(job.role), job.other
        batch = job.answered.batch
        try:
            if batch.contract_hash != other.contract.hash:
                batch = self.validate(job.records, other.contract, job.from_text)
        except InputError:
            self.metrics.error(role, "input")
            self._capture(job, None)
            return
        started = time.perf_counter()
        try:
            prediction = checked(other.predict(batch.columns, batch.numeric), batch.n_rows)
        except Exception as exc:  # noqa: BLE001 - counted against its role; the request was answered long ago
            self.metrics.error(role, "exception")
            _errors.error(role, "%s %s failed on request %s (scored off the request path): %s: %s", role,
                          other.version, job.request_id, type(exc).__name__, exc)
            self._capture(job, None)
            return
        self.metrics.ok(role, time.perf_counter() - started)
        answers = {job.role: job.answered.prediction, role: prediction}
        regression = job.answered.model.contract.task == other.contract.task == "regression"
        self.metrics.compared(answers[CHAMPION].values, answers[CANDIDATE].values, regression)
        models = {job.role: job.answered.model, role: other}
        self._capture(job, Pair(*(Answer(models[r].version, answers[r].values, answers[r].probabilities)
                                   for r in (CHAMPION, CANDIDATE))))

    def _capture(self, job: Job, pair: Pair | None) -> None:
        """The request's capture row: the client's answer, and both answers for a pair (always captured); an
        unpaired request is sampled as any other."""
        if self.capture is None:
            return
        model, batch, prediction = job.answered.model, job.answered.batch, job.answered.prediction
        self.capture.submit(job.request_id, model.name, model.version, batch.columns, batch.n_rows,
                            prediction.values, prediction.probabilities, batch.keys, served_by=job.role, pair=pair)
