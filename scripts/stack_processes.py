"""The local stack's processes, through psutil: which pid file still names what `up` started, the processes below
a component, those that carry the stack's marker, signals to processes and process groups, and the up/down lock.

A pid file holds "pid start-time": the start time in clock ticks since boot (the kernel's own, as
/proc/<pid>/stat gives it), so a pid the kernel has handed to another process since never counts as ours, and a
clock change (NTP, a resumed VM) does not make a running component look gone.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import IO

import psutil

from scripts.stack_settings import StackError

_TICKS = os.sysconf("SC_CLK_TCK")  # clock ticks per second: the unit of a start time since boot


def start_time(pid: int) -> str | None:
    """Start time in clock ticks since boot (guards against PID reuse); None if gone or a zombie."""
    if pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            since_boot = process.create_time() - psutil.boot_time()  # both from the kernel's boot time
    except psutil.Error:
        return None
    return str(round(since_boot * _TICKS))


def recorded_pid(run_dir: Path, name: str) -> int | None:
    """The pid in <name>.pid, if it still names the process `up` started."""
    with suppress(OSError, ValueError):
        pid, started = (run_dir / f"{name}.pid").read_text().split()[:2]
        return int(pid) if start_time(int(pid)) == started else None
    return None


def descendants(root: int) -> dict[int, int]:
    """pid -> process group of every live process below `root` (its children, theirs, ...), whatever their
    process group or session; {} if root is gone."""
    found = {}
    with suppress(psutil.Error):
        for child in psutil.Process(root).children(recursive=True):
            with suppress(OSError):  # gone meanwhile
                found[child.pid] = os.getpgid(child.pid)
    return found


def marked_pids(stack_id: str) -> set[int]:
    """Live processes whose environment carries the stack's marker, AIRFLOW_STACK_ID=<stack home>."""
    found = set()
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with suppress(psutil.Error):  # gone meanwhile, or another user's
            if process.environ().get("AIRFLOW_STACK_ID") == stack_id:
                found.add(process.pid)
    return found


def kill(pids: list[int], sig: int, group: bool = False) -> list[int]:
    """Signal processes (or process groups); those that exist (with signal 0: groups that have a member left)."""
    hit = []
    for pid in pids:
        with suppress(OSError):
            (os.killpg if group else os.kill)(pid, sig)
            hit.append(pid)
    return hit


def wait_groups(seconds: float, groups: list[int]) -> list[int]:
    """Wait until the process groups are gone or the time is up; those still alive."""
    deadline = time.monotonic() + seconds
    while (alive := kill(groups, 0, group=True)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def lock(run_dir: Path, wait: float = 300) -> IO[str]:
    """One `up` or `down` at a time per stack home: hold the returned file open while working."""
    run_dir.mkdir(parents=True, exist_ok=True)
    file, deadline = open(run_dir / ".lock", "w"), time.monotonic() + wait  # noqa: SIM115 - the caller closes it
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return file
        except BlockingIOError:
            if time.monotonic() > deadline:
                file.close()
                raise StackError(f"another up/down holds {run_dir}/.lock") from None
            time.sleep(0.2)
