"""Slow clients never hold a gunicorn thread: a connection reaches one only with its whole request head read.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives, and the thread then
blocks until the rest of the head comes in, with no time limit (gunicorn 26 has no header timeout: `timeout` is the
worker's heartbeat, `keepalive` only the idle time between requests). Sixty clients each sending one header byte
every few seconds (slowloris) hold all 32 threads of two workers, and /health stops answering.

HeadGate reads request heads in the worker's own event loop instead, as nginx does: without blocking, into a
buffer per connection, with no thread. A connection goes to a thread only once its head is complete (the blank line
after the headers), with the bytes read so far handed to gunicorn's own parser, which then parses them as if it had
read them itself. A head that is not complete within SERVING_HEAD_TIMEOUT seconds (default 10, nginx's
client_header_timeout in serving/deploy/nginx-prediction-server.conf) is answered 408 and closed; one larger than
MAX_HEAD_BYTES (32 KiB, nginx's 4 x 8k large_client_header_buffers) 431. The same goes for the next request of a
keep-alive connection. Request bodies are read by the thread, as before (the API's bodies come whole from nginx
where it fronts the server; docs/serving.md).

TLS at gunicorn and HTTP/2 cleartext read their first bytes themselves: connections of those go to gunicorn's path
unchanged (the project terminates TLS at nginx and serves HTTP/1.1).
"""

from __future__ import annotations

import selectors
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http2 import negotiation

MAX_HEAD_BYTES = 32 * 1024
HEAD_TIMEOUT_S = 10.0  # serving/gunicorn.conf.py sets it from SERVING_HEAD_TIMEOUT (configure)
READ_CHUNK = 8192
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def configure(head_timeout: float) -> None:
    """In the gunicorn master, before the workers fork (serving/gunicorn.conf.py)."""
    global HEAD_TIMEOUT_S
    HEAD_TIMEOUT_S = head_timeout


def head_complete(buffer: bytes | bytearray, since: int = 0) -> bool:
    """The head's terminating blank line is in `buffer`, looking from a little before `since` (what was already
    searched) on; empty lines before a request line do not count."""
    start = max(len(buffer) - len(buffer.lstrip(b"\r\n")), since - 3)
    return buffer.find(b"\r\n\r\n", start) != -1 or buffer.find(b"\n\n", start) != -1


class HeadGate:
    """Mixed into a gunicorn ThreadWorker (serving/workers.py): overrides enqueue_req, where gthread hands a
    connection to its thread pool, and murder_keepalived, which its loop runs at least once a second."""

    poller: Any
    nr_conns: int
    cfg: Any
    log: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting_heads: deque[Any] = deque()  # connections whose head is still coming, oldest deadline first

    def _gated(self, conn: Any) -> bool:
        return not self.cfg.is_ssl and not negotiation.prior_knowledge_allowed(self.cfg, conn.client)

    def enqueue_req(self, conn: Any) -> None:
        if not self._gated(conn):
            super().enqueue_req(conn)  # type: ignore[misc]
            return
        conn.head, conn.head_waiting = bytearray(), False
        conn.head_deadline = time.monotonic() + HEAD_TIMEOUT_S
        self._read_head(conn)
        if conn.head is not None:  # still coming: the loop watches the socket
            conn.head_waiting = True
            self.waiting_heads.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn: Any, _sock: Any) -> None:
        self._read_head(conn)

    def _read_head(self, conn: Any) -> None:
        """Read what has arrived, without blocking. The connection leaves the gate (conn.head None) for a thread
        once its head is complete, or closed; else it stays, with the bytes so far in conn.head."""
        while True:
            try:
                chunk = conn.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:  # the client closed (or reset) before its head was complete
                self._drop(conn, b"")
                return
            searched = len(conn.head)
            conn.head += chunk  # a bytearray: grows in place, and only the new bytes are searched
            if head_complete(conn.head, searched):
                self._to_thread(conn)
                return
            if len(conn.head) > MAX_HEAD_BYTES:
                self._drop(conn, TOO_LARGE)
                return

    def _leave_gate(self, conn: Any) -> bytes:
        head, conn.head = bytes(conn.head), None
        if conn.head_waiting:
            conn.head_waiting = False
            self.waiting_heads.remove(conn)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        return head

    def _to_thread(self, conn: Any) -> None:
        head = self._leave_gate(conn)
        conn.init()  # HTTP/1.x (the gate's condition): makes the parser if it is a new connection, reads nothing
        unreader = conn.parser.unreader
        unreader.unread(unreader.take_buffered() + head)  # after any bytes a keep-alive parser still holds
        conn.data_ready = True  # gthread's handle() then waits for no more data before parsing
        super().enqueue_req(conn)  # type: ignore[misc]

    def _drop(self, conn: Any, answer: bytes) -> None:
        self._leave_gate(conn)
        if answer:
            try:
                conn.sock.send(answer)  # non-blocking: what fits in the socket buffer, if anything
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self) -> None:
        super().murder_keepalived()  # type: ignore[misc]
        now = time.monotonic()
        while self.waiting_heads and self.waiting_heads[0].head_deadline <= now:
            self._drop(self.waiting_heads[0], TIMED_OUT)
