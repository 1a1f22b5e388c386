"""serving/request_heads.py's end-of-head check, fed whole and byte by byte as a slow client sends it (the gate's
behaviour on real sockets is tests/deploy/test_nginx_front.py's)."""

from __future__ import annotations

import pytest

from serving.request_heads import head_complete

HEADS = {
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n": True,
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}": True,  # body bytes after the head
    b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n": True,  # empty lines first, then a whole head
    b"\r\n\r\nGET /health HTTP/1.1\r\n": False,  # empty lines do not end a head that has not begun
    b"GET /health HTTP/1.1\r\nHost: x\r\n": False,
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r": False,
    b"GET /health HTTP/1.1\nHost: x\n\n": True,  # bare LF: handed on, gunicorn's parser decides
}


@pytest.mark.parametrize("head", HEADS)
def test_a_head_is_complete_whole_or_byte_by_byte(head: bytes) -> None:
    assert head_complete(head) is HEADS[head]
    buffer, seen = bytearray(), False
    for byte in head:
        searched = len(buffer)
        buffer.append(byte)
        seen = seen or head_complete(buffer, searched)
    assert seen is HEADS[head]
