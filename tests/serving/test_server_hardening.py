"""A real gunicorn prediction server (serving/gunicorn.conf.py) against two low findings:

- raw control characters sent in the request line reach the access log escaped (\\xNN), never raw;
- it opens no gunicorn control socket (gunicorn 25.1+ opens one by default in $XDG_RUNTIME_DIR or ~/.gunicorn, one
  path shared by every gunicorn the user runs), while plain gunicorn of the same version does (the control).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.network import free_port, wait_until
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration  # real gunicorn servers

# Request lines an attacker sends byte for byte: ESC sequences that clear or recolour the terminal showing the log,
# a CR that rewrites the line on it, NUL, DEL, and the C1 CSI byte (0x9b, the one-byte ESC [).
HOSTILE = {
    "esc": b"/health?a=\x1b[2J\x1b[31mFORGED",
    "cr": b"/health?a=x\rFORGED",
    "nul-del": b"/health?a=\x00\x7f",
    "c1": b"/health?a=\x9b2J",
}
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # any control byte but the lines' own \n


def send_raw(port: int, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_control_characters_from_the_request_line_are_escaped_in_the_access_log(store: Path, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", SERVING_ACCESS_LOG=str(access)) as server:
        answers = {name: send_raw(server.port, target) for name, target in HOSTILE.items()}
        assert send_raw(server.port, b"/health?a=plain").startswith(b"HTTP/1.1 200")
        wait_until(lambda: b"a=plain" in access.read_bytes(), timeout=10)
    # The attack's premise: gunicorn accepted every one of these request lines and answered it.
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers.values()), answers
    log = access.read_bytes()
    assert RAW_CONTROL.search(log) is None, log
    lines = [line for line in log.decode("utf-8").splitlines() if "a=" in line]
    assert len(lines) == len(HOSTILE) + 1, lines  # one line each: no CR or LF split or rewrote one
    for expected in (r"a=\x1b[2J\x1b[31mFORGED", r"a=x\x0dFORGED", r"a=\x00\x7f", r"a=\x9b2J"):
        assert any(expected in line for line in lines), (expected, lines)
    plain = next(line for line in lines if "a=plain" in line)
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^]]+\] "GET /health\?a=plain HTTP/1\.1" 200 \d+ "-" "-"', plain), plain


def control_sockets(home: Path, runtime: Path) -> list[Path]:
    return [*home.rglob("*.ctl"), *runtime.rglob("*.ctl")]


def test_the_server_opens_no_control_socket(store: Path, tmp_path: Path) -> None:
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    for xdg in (str(runtime), ""):  # gunicorn's default is $XDG_RUNTIME_DIR/gunicorn.ctl, else ~/.gunicorn/
        with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", HOME=str(home),
                              XDG_RUNTIME_DIR=xdg) as server:
            time.sleep(1.0)  # the master opens its control socket right after the workers start
            assert server.process is not None and server.process.poll() is None
            assert control_sockets(home, runtime) == []


def test_plain_gunicorn_of_the_pinned_version_does_open_one(tmp_path: Path) -> None:
    """The control: the same gunicorn without serving/gunicorn.conf.py makes ~/.gunicorn/gunicorn.ctl, so the test
    above would see one if the setting were missing."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "/dev/null", "-b", f"127.0.0.1:{free_port()}",
                                "-w", "1", "wsgiref.simple_server:demo_app"],
                               env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: control_sockets(home, runtime) != [], timeout=30)
        assert control_sockets(home, runtime) == [home / ".gunicorn" / "gunicorn.ctl"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
