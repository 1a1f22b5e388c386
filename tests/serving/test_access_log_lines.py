"""The access log's lines are gunicorn's own, built from only the fields the format names (serving/access_log.py)."""

from __future__ import annotations

import datetime
import logging

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from serving.access_log import AccessLogger

EVERY_FIELD = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s %(B)s "%(f)s" "%(a)s" %(T)s '
               '%(D)s %(M)s %(L)s %(p)s %({user-agent}i)s %({X-Model-Version}o)s %({remote_port}e)s %({absent}i)s '
               '%(undefined)s 100%%')


class _Response:
    status = "200 OK"
    sent = 35
    headers = [("Content-Type", "application/json"), ("X-Model-Version", "7"), ("X-Model-Version", "8")]


class _Request:
    headers = [("HOST", "127.0.0.1"), ("USER-AGENT", 'curl "quoted"'), ("AUTHORIZATION", "Basic dXNlcjpwYXNz")]


ENVIRON = {"REQUEST_METHOD": "POST", "RAW_URI": "/invocations?x=1", "PATH_INFO": "/invocations",
           "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.9", "REMOTE_PORT": "5123",
           "HTTP_USER_AGENT": 'curl "quoted"', "HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz",
           "wsgi.url_scheme": "http"}


class _FixedClock:
    def now(self) -> str:
        return "[30/Nov/2026:12:00:00 +0000]"


class _Gunicorns(_FixedClock, Logger):
    pass


class _Ours(_FixedClock, AccessLogger):
    pass


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _line(logger_class: type[Logger], access_log_format: str, environ: dict[str, str]) -> str:
    config = Config()
    config.set("accesslog", "-")
    config.set("access_log_format", access_log_format)
    logger = logger_class(config)
    lines = _Lines()
    logger.access_log.handlers = [lines]
    logger.access(_Response(), _Request(), environ, datetime.timedelta(seconds=1, microseconds=2345))
    return lines.lines[0]


@pytest.mark.parametrize("access_log_format", [Config().access_log_format, EVERY_FIELD])
@pytest.mark.parametrize("environ", [ENVIRON, {k: v for k, v in ENVIRON.items() if not k.startswith("HTTP_")}],
                         ids=["all headers", "no user agent, referer or auth"])
def test_access_lines_are_gunicorns_own(access_log_format: str, environ: dict[str, str]) -> None:
    ours = _line(_Ours, access_log_format, environ)
    assert ours == _line(_Gunicorns, access_log_format, environ)
    if access_log_format == EVERY_FIELD:
        assert 'curl \\"quoted\\"' in ours and " 8 5123 - - 100%" in ours  # escaped; last header wins
