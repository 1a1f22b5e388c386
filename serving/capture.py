"""Prediction capture: a sample of the requests a worker answers, as gzip JSON lines for the monitor.

Layout (the contract the monitor reads, docs/serving.md "Prediction capture"):

    <capture_dir>/<model_name>/<YYYY-MM-DD>/<host>-<pid>-<start>-<seq>.jsonl.gz

one JSON object per input row of a sampled request: request_id, row, timestamp (UTC), model_name, model_version,
key (the row's id columns as sent, {"<id column>": value}; absent when the request sent none), inputs (each
contract feature as validated; a datetime as ISO 8601 text in UTC without an offset), prediction, probabilities,
served_by ("champion" | "candidate": which model answered). During a release (serving/release.py) a request scored
by both models is captured once, always (whatever the sample), with both answers beside the one the client got:
champion and candidate, each {"version", "prediction", "probabilities"} (probabilities null for regression).
A file is written as `<name>.part` and renamed when closed, so a reader sees only complete files.

Writing is off the request path: a request puts one item on a queue bounded in rows (full: the rows are dropped
and counted, the request never waits) and a writer thread per worker encodes, compresses and rotates the files
(by size and age). The writer checks the disk's fill level every CHECK_ROWS rows or CHECK_SECONDS seconds and
stops capturing above `capture_max_fill`, with one log line and serving_capture_enabled 0; it resumes below.
`close()` (gunicorn's worker_exit: graceful stop, max-requests restart, reload) writes every queued row and closes
the files: a sampled row is lost only when dropped, and every drop is counted by reason.

`ship()` moves closed files to S3 (`python -m serving ship-capture`, a systemd timer on EC2).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import msgspec
import numpy as np

log = logging.getLogger(__name__)

SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SUFFIX = ".jsonl.gz"
PART = ".part"
CHECK_ROWS = 1_000  # the disk's fill level is checked after this many rows written ...
CHECK_SECONDS = 5.0  # ... or this many seconds, whichever comes first (never per request)
_STOP = object()


def request_id(given: str | None) -> str:
    """The client's X-Request-ID when it is safe to log and echo (letters, digits, . _ : -, up to 128), else a
    fresh uuid4 hex: an unsafe value is never echoed."""
    if given and SAFE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def disk_fill(path: Path) -> float:
    """The used fraction of the file system holding `path`, as `df` counts it (blocks unavailable to users)."""
    stat = os.statvfs(path)
    return 1.0 - stat.f_bavail / stat.f_blocks if stat.f_blocks else 0.0


@dataclass(frozen=True)
class CaptureCounters:
    """Where the writer reports: rows written, rows dropped by reason, and whether it is capturing (1) or not."""

    captured: Callable[[int], None] = lambda rows: None
    dropped: Callable[[str, int], None] = lambda reason, rows: None
    enabled: Callable[[bool], None] = lambda on: None


@dataclass(frozen=True)
class Answer:
    """One model's answers to a request's rows, for a paired capture row."""

    version: str
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None


@dataclass(frozen=True)
class Pair:
    champion: Answer
    candidate: Answer


@dataclass(frozen=True)
class _Request:
    """One sampled request, as the request thread hands it over (encoded by the writer thread)."""

    request_id: str
    timestamp: datetime
    model_name: str
    model_version: str
    columns: dict[str, np.ndarray]
    n_rows: int
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None
    keys: dict[str, list[Any]]
    served_by: str = "champion"
    pair: Pair | None = None


@dataclass
class _OpenFile:
    part: Path
    raw: BinaryIO  # the file itself (0600); `stream` compresses into it
    stream: gzip.GzipFile
    opened: float
    size: int = 0  # uncompressed bytes written


class CaptureWriter:
    """The capture of one worker: `submit` on request threads, a writer thread doing all the I/O."""

    def __init__(self, directory: Path, *, sample: float = 1.0, max_fill: float = 0.75,
                 rotate_bytes: int = 16 * 1024 * 1024, rotate_seconds: float = 300.0, queue_rows: int = 100_000,
                 counters: CaptureCounters | None = None, fill: Callable[[Path], float] = disk_fill,
                 check_seconds: float = CHECK_SECONDS) -> None:
        self.directory = directory
        self.sample, self.max_fill, self.queue_rows = sample, max_fill, queue_rows
        self.rotate_bytes, self.rotate_seconds = rotate_bytes, rotate_seconds
        self.counters = counters or CaptureCounters()
        self._fill, self._check_seconds = fill, check_seconds
        self._prefix = "-".join((re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host", str(os.getpid()),
                                 datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")))
        self._seq = 0
        self._files: dict[tuple[str, str], _OpenFile] = {}
        self._encoder = msgspec.json.Encoder()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # rows queued, not yet written
        self._closed = False
        self._rows_since_check, self._checked_at = 0, 0.0
        _private_dirs(directory)
        self.enabled = True
        self._check_disk()  # reports a stop itself
        if self.enabled:
            self.counters.enabled(True)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    # --- request threads ------------------------------------------------------------------------------------

    def submit(self, request_id: str, model_name: str, model_version: str, columns: dict[str, np.ndarray],
               n_rows: int, predictions: list[Any], probabilities: list[dict[str, float]] | None,
               keys: dict[str, list[Any]] | None = None, served_by: str = "champion",
               pair: Pair | None = None) -> bool:
        """Queue a request's rows if it is sampled (all its rows or none; a `pair` always); never blocks. True when
        queued. `keys`: the id columns the request sent (inputs.Batch.keys), None where a row has none.
        `served_by`: the role of the model that answered; `pair`: both models' answers (the release gate needs
        every pair, so a pair is not sampled)."""
        if pair is None and self.sample < 1.0 and random.random() >= self.sample:
            return False
        item = _Request(request_id, datetime.now(timezone.utc), model_name, model_version, columns, n_rows,
                        predictions, probabilities, keys or {}, served_by, pair)
        with self._lock:  # held for the put too: nothing is queued behind close()'s stop mark
            if self._closed:
                reason = "shutdown"
            elif not self.enabled:
                reason = "disk_full"
            elif self._pending + n_rows > self.queue_rows:
                reason = "queue_full"
            else:
                self._pending += n_rows
                self._queue.put(item)  # unbounded SimpleQueue: never blocks
                return True
        self.counters.dropped(reason, n_rows)
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, close and rename the open files; later submits are dropped ("shutdown")."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("capture writer did not finish within %.0fs; %d rows may be lost", timeout, self._pending)

    # --- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        tick = max(0.05, min(1.0, self.rotate_seconds / 4, self._check_seconds / 2))
        while True:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            try:
                if item is not None:
                    self._write(item)
                self._maintain()
            except Exception:  # noqa: BLE001 - the writer must outlive any one bad record or disk error
                log.exception("capture writer error; carrying on")
        self._close_all()

    def _write(self, item: _Request) -> None:
        try:
            if not self.enabled:
                self.counters.dropped("disk_full", item.n_rows)
                return
            try:
                lines = self._encode(item)
            except Exception as exc:  # noqa: BLE001 - a value the encoder refuses costs its request's rows only
                log.error("capture: cannot encode request %s: %s", item.request_id, exc)
                self.counters.dropped("error", item.n_rows)
                return
            key = (item.model_name, item.timestamp.strftime("%Y-%m-%d"))
            try:
                handle = self._files.get(key) or self._open(*key)
                handle.stream.write(lines)
                handle.size += len(lines)
            except OSError as exc:
                log.error("capture: cannot write %s rows to %s: %s", item.n_rows, self.directory, exc)
                self.counters.dropped("error", item.n_rows)
                self._finish(key)
                return
            self.counters.captured(item.n_rows)
            self._rows_since_check += item.n_rows
            if handle.size >= self.rotate_bytes:
                self._finish(key)
        finally:
            with self._lock:
                self._pending -= item.n_rows

    def _encode(self, item: _Request) -> bytes:
        names = list(item.columns)
        values = [_plain(item.columns[name]) for name in names]
        timestamp = item.timestamp.isoformat(timespec="microseconds").replace("+00:00", "Z")
        probabilities = item.probabilities or [None] * item.n_rows
        keys: list[dict[str, Any]] = [{} for _ in range(item.n_rows)]
        for name, column in item.keys.items():
            for key, value in zip(keys, column):
                if value is not None:
                    key[name] = value
        records = [{"request_id": item.request_id, "row": i, "timestamp": timestamp, "model_name": item.model_name,
                    "model_version": item.model_version, **({"key": keys[i]} if keys[i] else {}),
                    "inputs": {name: column[i] for name, column in zip(names, values)},
                    "prediction": item.predictions[i], "probabilities": probabilities[i],
                    "served_by": item.served_by, **_paired(item.pair, i)}
                   for i in range(item.n_rows)]
        return b"".join(self._encoder.encode(record) + b"\n" for record in records)

    def _open(self, model_name: str, date: str) -> _OpenFile:
        folder = self.directory / model_folder(model_name) / date
        _private_dirs(folder)
        self._seq += 1
        part = folder / f"{self._prefix}-{self._seq:06d}{SUFFIX}{PART}"
        raw = _private_file(part)
        handle = _OpenFile(part, raw, gzip.GzipFile(str(part), "wb", compresslevel=6, fileobj=raw), time.monotonic())
        self._files[(model_name, date)] = handle
        return handle

    def _finish(self, key: tuple[str, str]) -> None:
        """Close a file and give it its final name (readers take only those)."""
        handle = self._files.pop(key, None)
        if handle is None:
            return
        try:
            handle.stream.close()
            handle.raw.close()
            os.replace(handle.part, handle.part.with_name(handle.part.name.removesuffix(PART)))
        except OSError as exc:
            log.error("capture: cannot close %s: %s", handle.part, exc)

    def _close_all(self) -> None:
        for key in list(self._files):
            self._finish(key)

    def _maintain(self) -> None:
        now = time.monotonic()
        for key, handle in list(self._files.items()):
            if now - handle.opened >= self.rotate_seconds:
                self._finish(key)
        if self._rows_since_check >= CHECK_ROWS or now - self._checked_at >= self._check_seconds:
            self._check_disk()

    def _check_disk(self) -> None:
        self._rows_since_check, self._checked_at = 0, time.monotonic()
        try:
            fill = self._fill(self.directory)
        except OSError as exc:
            log.error("capture: cannot read the fill level of %s: %s", self.directory, exc)
            return
        if self.enabled and fill >= self.max_fill:
            self.enabled = False
            self._close_all()
            log.warning("capture stopped: the disk of %s is %.1f%% full (SERVING_CAPTURE_MAX_FILL %.4g%%); "
                        "sampled rows are dropped (serving_capture_dropped_rows{reason=\"disk_full\"}) until it "
                        "drops below", self.directory, 100 * fill, 100 * self.max_fill)
            self.counters.enabled(False)
        elif not self.enabled and fill < self.max_fill:
            self.enabled = True
            log.warning("capture resumed: the disk of %s is %.1f%% full, below SERVING_CAPTURE_MAX_FILL %.4g%%",
                        self.directory, 100 * fill, 100 * self.max_fill)
            self.counters.enabled(True)


def _paired(pair: Pair | None, row: int) -> dict[str, Any]:
    """A pair's "champion" and "candidate" answers to one row; {} for a request one model scored."""
    if pair is None:
        return {}
    return {role: {"version": answer.version, "prediction": answer.predictions[row],
                   "probabilities": answer.probabilities[row] if answer.probabilities is not None else None}
            for role, answer in (("champion", pair.champion), ("candidate", pair.candidate))}


def _plain(column: np.ndarray) -> list[Any]:
    """A validated column as JSON values: numpy scalars as Python ones (NaN encodes as null), a datetime as ISO 8601
    text in UTC without an offset (whole seconds, or microseconds when it has a fraction), NaT as null."""
    if column.dtype.kind != "M":
        return column.tolist()
    fraction = ~np.isnat(column) & (column.astype("datetime64[ns]").astype(np.int64) % 1_000_000_000 != 0)
    text = np.datetime_as_string(column, unit="us" if fraction.any() else "s").tolist()
    return [None if t == "NaT" else t for t in text]


def _private_dirs(path: Path) -> None:
    """`path` and each missing parent created 0700, whatever the umask: rows of requests are readable by the server's
    user only (and the monitor's, which runs as the same user: docs/serving.md)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another worker made it first
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask; chmod's is not


def _private_file(path: Path) -> BinaryIO:
    """A new file, 0600 from its creation on (os.open's mode can only lose bits to the umask, never gain them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return open(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def model_folder(name: str) -> str:
    """The folder a model's capture files are under, in the capture dir and under an S3 prefix: its name as one
    path component (registered model names are free text). The one definition of the layout: the monitor and the
    release evidence read the folder this names."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "model"


# --- reading and shipping ---------------------------------------------------------------------------------------


def closed_files(directory: Path) -> Iterator[Path]:
    """The complete capture files under `directory` (<model>/<date>/<file>.jsonl.gz), oldest date first."""
    return iter(sorted(directory.glob(f"*/*/*{SUFFIX}"), key=lambda p: (p.parent.name, p.name)))


def read_records(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rb") as stream:
        return [json.loads(line) for line in stream if line.strip()]
