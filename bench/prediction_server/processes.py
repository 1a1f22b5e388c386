"""The benchmark's children, each in a process group (session) of its own, all stopped on exit or signal; the CPU
a group used.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import psutil

from bench.common import PROJECT_ROOT

log = logging.getLogger("bench.prediction_server")

STOP_GRACE_S = 10.0


class ProcessGroups:
    """Every child runs in its own session (process group); all of them are killed on exit or signal."""

    def __init__(self, nice: int = 0) -> None:
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self.nice = nice

    def start(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path = PROJECT_ROOT
              ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.running[proc.pid] = proc
        if self.nice:
            set_autogroup_nice(proc.pid, self.nice)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the whole group, SIGKILL what is left after a grace period."""
        pgid = proc.pid  # start_new_session: the child leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.1)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        self.running.pop(proc.pid, None)

    def stop_all(self) -> None:
        for proc in list(self.running.values()):
            self.stop(proc)


def set_autogroup_nice(pid: int | str, nice: int) -> None:
    """With autogroup scheduling (Linux's default on desktops and here) each session is one scheduling
    entity, so a process's own niceness only counts within its session: set the session's too."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError as exc:
        log.warning("could not set the autogroup niceness of %s: %s", pid, exc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU of every live process in the group (psutil)."""
    total = 0.0
    for process in psutil.process_iter():
        with suppress(psutil.Error, OSError):  # gone meanwhile
            if os.getpgid(process.pid) == pgid:
                times = process.cpu_times()
                total += times.user + times.system
    return total
