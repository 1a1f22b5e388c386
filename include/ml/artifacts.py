"""The artifacts tree (<root>/<run id>/<stage>/) and atomic writes into it.

A reader never sees a half-written file: everything is written to a temporary
name in the same directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from include.ml.exceptions import StageInputError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def safe_run_id(run_id: str) -> str:
    """Turn any run id (Airflow's hold ':' and '+') into a directory name."""
    cleaned = _UNSAFE.sub("_", run_id).strip("._")
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return cleaned


def stage_dir(artifacts_root: Path, run_id: str, stage: str) -> Path:
    """Where `stage` of `run_id` keeps its outputs; created by the first write into it."""
    return artifacts_root / safe_run_id(run_id) / stage


def latest_run_id(artifacts_root: Path) -> str:
    runs = sorted((p for p in artifacts_root.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) \
        if artifacts_root.is_dir() else []
    if not runs:
        raise StageInputError(f"no runs under {artifacts_root}; run the ingest stage first")
    return runs[-1].name


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: Path, payload: dict[str, Any]) -> None:
    write_bytes(target, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StageInputError(f"{path} is missing; run the stage that writes it first")
    return json.loads(path.read_text())


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; swap it in for `target` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
