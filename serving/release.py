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
(serving_release_shadow_dropped_total), never waited for. The scorer works in rounds: the first request queued wakes
it, it waits GATHER_SECONDS for more, then scores all that is queued with one call of the other model, counts both
models' calls by role, compares the answers (serving_release_agreement, serving_release_pairs_total) and captures
every pair. On this machine a thread wake-up and a metrics write cost more than scoring a row with ONNX Runtime,
so per-request wake-ups and writes doubled what shadow costs (docs/benchmarks.md, "Shadow cost").
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from serving.body import InputError
from serving.capture import Answer, CaptureWriter, Pair
from serving.contract import Contract
from serving.inputs import Batch
from serving.metrics import ReleaseMetrics, relative_differences
from serving.model import LoadedModel, Prediction

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"
SHADOW, CANARY = "shadow", "canary"
_SCALE = float(2 ** 64)
_STOP = object()
LOG_EVERY = 10.0  # seconds between two log lines about failing calls of one role
# The scorer thread scores in rounds: woken by the first request queued, it waits this long for more, then scores
# everything queued (up to MAX_JOBS requests) with one model call. A wake-up per request would cost more than the
# scoring itself (docs/benchmarks.md, "Shadow cost").
GATHER_SECONDS = 0.02
MAX_JOBS = 512

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
    seconds: float = 0.0  # the model call's time


@dataclass(frozen=True)
class Job:
    """A request answered by `answered.model` (in role `role`) that `other` is to score off the request path. The
    answering call is counted by the scorer too (with the pair's round: one metrics write per round, not per
    request)."""

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
    """The candidate's answer on the request path (canary; its call is counted with its Job), or None and why
    not: "input" when its contract refuses the rows (counted by the caller only if the champion takes them: else
    the input is the client's mistake), "exception" when it raised (counted here)."""
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
    return Scored(candidate, batch, prediction, time.perf_counter() - started), None


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
            self.metrics.ok(job.role, job.answered.seconds)
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
            first = self._queue.get()  # the only wait that a request's put wakes: one per round, not per request
            if first is _STOP:
                return
            time.sleep(GATHER_SECONDS)  # requests answered meanwhile queue without waking this thread
            jobs, stop = [first], False
            while len(jobs) < MAX_JOBS:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                jobs.append(job)
            try:
                self.score(jobs)
            except Exception:  # noqa: BLE001 - the scorer must outlive any one round
                log.exception("release scorer error on %d request(s); carrying on", len(jobs))
            if stop:
                return

    def score(self, jobs: list[Job]) -> None:
        """Score the jobs' rows with the other model (one call for the jobs of one model and contract), count both
        models' calls, compare the answers, capture the pairs."""
        figures = Round()
        for job in jobs:
            figures.seconds[job.role].append(job.answered.seconds)
        groups: dict[tuple[int, str], list[tuple[Job, Batch]]] = {}
        for job in jobs:
            batch = self._batch(job)
            if batch is not None:
                groups.setdefault((id(job.other), batch.contract_hash), []).append((job, batch))
        try:
            for group in groups.values():
                if len(group) > 1:
                    try:
                        self._score_together(group, figures)
                        continue
                    except Exception:  # noqa: BLE001 - scored one by one below, each failure counted for its own
                        pass
                for job, batch in group:
                    self._score_together([(job, batch)], figures)
        finally:
            figures.report(self.metrics)

    def _batch(self, job: Job) -> Batch | None:
        """The job's rows for the other model: as answered when both contracts are one, else validated again (a
        refusal is counted as the other model's input error, and the answer captured alone)."""
        batch = job.answered.batch
        if batch.contract_hash == job.other.contract.hash:
            return batch
        try:
            return self.validate(job.records, job.other.contract, job.from_text)
        except InputError:
            self.metrics.error(other_role(job.role), "input")
            self._capture(job, None)
            return None

    def _score_together(self, group: list[tuple[Job, Batch]], figures: Round) -> None:
        """One model call for the group's rows; each request's call time is that call's (an upper bound of what it
        would take alone). A group of one that fails is counted as its request's error."""
        first = group[0][0]
        role, other = other_role(first.role), first.other
        batches = [batch for _, batch in group]
        rows = sum(batch.n_rows for batch in batches)
        started = time.perf_counter()
        try:
            prediction = checked(other.predict(*_joined(batches)), rows)
        except Exception as exc:
            if len(group) > 1:
                raise
            self.metrics.error(role, "exception")
            _errors.error(role, "%s %s failed on request %s (scored off the request path): %s: %s", role,
                          other.version, first.request_id, type(exc).__name__, exc)
            self._capture(first, None)
            return
        seconds = time.perf_counter() - started  # each request's: the call that scored its rows
        figures.seconds[role] += [seconds] * len(group)
        regression = first.answered.model.contract.task == other.contract.task == "regression"
        offset = 0
        for job, batch in group:
            end = offset + batch.n_rows
            values = prediction.values[offset:end]
            answered = job.answered.prediction
            champion, candidate = (answered.values, values) if role == CANDIDATE else (values, answered.values)
            figures.compare(champion, candidate, regression)
            if self.capture is not None:
                probabilities = prediction.probabilities[offset:end] if prediction.probabilities is not None \
                    else None
                mine = Answer(other.version, values, probabilities)
                theirs = Answer(job.answered.model.version, answered.values, answered.probabilities)
                self._capture(job, Pair(theirs, mine) if role == CANDIDATE else Pair(mine, theirs))
            offset = end

    def _capture(self, job: Job, pair: Pair | None) -> None:
        """The request's capture row: the client's answer, and both answers for a pair (always captured); an
        unpaired request is sampled as any other."""
        if self.capture is None:
            return
        model, batch, prediction = job.answered.model, job.answered.batch, job.answered.prediction
        self.capture.submit(job.request_id, model.name, model.version, batch.columns, batch.n_rows,
                            prediction.values, prediction.probabilities, batch.keys, served_by=job.role, pair=pair)


@dataclass
class Round:
    """What one round of the scorer measured, reported to the metrics at once (a few writes per round: each write
    to a worker's metrics file costs a lock and a system call)."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {CHAMPION: [], CANDIDATE: []})
    champion: list[Any] = field(default_factory=list)  # regression rows' answers, compared in report()
    candidate: list[Any] = field(default_factory=list)
    agree: int = 0  # classification rows
    disagree: int = 0

    def compare(self, champion: list[Any], candidate: list[Any], regression: bool) -> None:
        if regression:
            self.champion += champion
            self.candidate += candidate
            return
        same = sum(1 for a, b in zip(champion, candidate) if a == b)
        self.agree, self.disagree = self.agree + same, self.disagree + len(champion) - same

    def report(self, metrics: ReleaseMetrics) -> None:
        for role, seconds in self.seconds.items():
            if seconds:
                metrics.ok_many(role, seconds)
        differences = relative_differences(self.champion, self.candidate) if self.champion else []
        metrics.compared_many(differences, self.agree, self.disagree)


def _joined(batches: list[Batch]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The batches' rows as one model input: columns, and the numeric array when every batch has one."""
    if len(batches) == 1:
        return batches[0].columns, batches[0].numeric
    columns = {name: np.concatenate([batch.columns[name] for batch in batches]) for name in batches[0].columns}
    numerics = [batch.numeric for batch in batches]
    numeric = np.concatenate(numerics) if all(n is not None for n in numerics) else None
    return columns, numeric
