"""Server settings, from SERVING_* environment variables (the systemd unit, compose file or shell sets them).

The one place they are read: the app (create_app) and gunicorn (gunicorn.conf.py) both take them from here.
An empty variable means "not set", except SERVING_ACCESS_LOG, where empty turns the access log off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from serving.signing import PublicKeys, load_public_keys


class SettingsError(ValueError):
    """A SERVING_* variable holds a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    model_store: Path = Path("models")
    api_key: str | None = None  # when set, /predict and /invocations need it (X-API-Key or Bearer)
    max_rows: int = 10_000  # rows per request
    # columns in one row or CSV header; 0: from the served model, twice its columns and at least 16 more
    max_columns: int = 0
    # values (rows x columns) in one request; 0: from the served model, SERVING_MAX_ROWS + 1 rows of its columns,
    # plus 1,000 (serving/limits.py)
    max_values: int = 0
    max_body_bytes: int = 10 * 1024 * 1024
    out_of_range: str = "reject"  # reject | flag
    batching: bool = True
    batch_max_rows: int = 64
    batch_max_wait_ms: float = 1.0
    poll_seconds: float = 1.0  # how often each worker checks the store's CURRENT pointer; 0 disables
    # PEM file of the public key(s) bundle signatures must verify with (serving/signing.py). Not set: every
    # bundle is refused, since none can be verified.
    public_key: Path | None = None
    # The model this server serves: a CURRENT pointer naming another is refused (serving/pointer.py). Not set: the
    # model of the first pointer the process applied, or of the store's last applied pointer (<store>/.sequence).
    model_name: str | None = None
    keep_bundles: int = 5  # bundles a store keeps besides CURRENT and PREVIOUS; older ones are pruned
    # Prediction capture (serving/capture.py, docs/serving.md): gzip JSON lines of sampled requests under this
    # directory, for the monitor. Not set: capture is off.
    capture_dir: Path | None = None
    capture_sample: float = 1.0  # fraction of prediction requests captured, whole requests (the demo: all)
    capture_max_fill: float = 0.75  # capture stops while the disk is fuller than this (SageMaker's guidance)
    capture_rotate_bytes: int = 16 * 1024 * 1024  # a file is closed after this many JSON bytes (uncompressed) ...
    capture_rotate_seconds: float = 300.0  # ... or this long after it was opened
    capture_queue_rows: int = 100_000  # rows waiting for the writer thread; beyond, sampled rows are dropped
    # Releases (serving/release.py): the header whose value routes a request to the same model every time (else
    # its request id does), and how many paired requests may wait for their second scoring (beyond: dropped)
    sticky_header: str = "X-Client-Key"
    release_queue: int = 1024
    # Explanations (POST /explain, docs/serving.md): "off" turns the route off (404); at most this many rows per
    # request (TreeSHAP costs far more than a prediction), and never more than SERVING_MAX_ROWS
    explain: bool = True
    explain_max_rows: int = 100
    # gunicorn (serving/gunicorn.conf.py)
    bind: str = "127.0.0.1:8000"
    workers: int = 2
    threads: int = 16  # per worker: requests that wait on the micro-batcher hold a thread each
    timeout: int = 30
    graceful_timeout: int = 30
    keepalive: int = 5
    # Seconds a client has to send a whole request head (line and headers) before it is answered 408 and closed;
    # until then it holds no thread (serving/request_heads.py). nginx's client_header_timeout, for where no nginx is.
    head_timeout: float = 10.0
    access_log: str = "-"  # "-": stdout; a file path; "": off
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SERVING_{f.name.upper()}")
            if raw is not None and (raw != "" or f.name == "access_log"):
                values[f.name] = _parse(f"SERVING_{f.name.upper()}", raw, f.default, str(f.type))
        settings = replace(cls(), **values, **(overrides or {}))
        settings.check()
        return settings

    def check(self) -> None:
        if self.out_of_range not in ("reject", "flag"):
            raise SettingsError(f"SERVING_OUT_OF_RANGE must be 'reject' or 'flag', got {self.out_of_range!r}")
        for name in ("max_rows", "max_body_bytes", "batch_max_rows", "workers", "threads", "timeout", "keep_bundles",
                     "capture_rotate_bytes", "release_queue", "explain_max_rows"):
            if getattr(self, name) < 1:
                raise SettingsError(f"SERVING_{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.max_columns < 0 or self.max_values < 0:
            raise SettingsError("SERVING_MAX_COLUMNS and SERVING_MAX_VALUES cannot be negative (0: from the model)")
        if not self.sticky_header.strip():
            raise SettingsError("SERVING_STICKY_HEADER cannot be blank")
        if not self.head_timeout > 0:
            raise SettingsError(f"SERVING_HEAD_TIMEOUT must be positive, got {self.head_timeout}")
        if self.batch_max_wait_ms < 0 or self.poll_seconds < 0:
            raise SettingsError("SERVING_BATCH_MAX_WAIT_MS and SERVING_POLL_SECONDS cannot be negative")
        if not 0.0 <= self.capture_sample <= 1.0:
            raise SettingsError(f"SERVING_CAPTURE_SAMPLE must be a fraction from 0 to 1, got {self.capture_sample}")
        if not 0.0 < self.capture_max_fill <= 1.0:
            raise SettingsError(f"SERVING_CAPTURE_MAX_FILL must be a fraction above 0, at most 1, got "
                                f"{self.capture_max_fill}")
        if not self.capture_rotate_seconds > 0:
            raise SettingsError(f"SERVING_CAPTURE_ROTATE_SECONDS must be positive, got {self.capture_rotate_seconds}")
        if self.capture_queue_rows < self.max_rows:  # else a request of max_rows rows could never be captured
            raise SettingsError(f"SERVING_CAPTURE_QUEUE_ROWS ({self.capture_queue_rows}) must be at least "
                                f"SERVING_MAX_ROWS ({self.max_rows})")

    def trusted_keys(self) -> PublicKeys:
        """The public keys of SERVING_PUBLIC_KEY ({} when it is not set: then nothing verifies)."""
        if self.public_key is None:
            return {}
        try:
            return load_public_keys(self.public_key)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"SERVING_PUBLIC_KEY={self.public_key}: {exc}") from exc


def _parse(name: str, raw: str, default: Any, annotation: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if annotation.startswith("Path"):
            return Path(raw)
        if default is None or isinstance(default, str):
            return raw
        return type(default)(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
