"""JSON responses, and the one error shape every endpoint answers with."""

from __future__ import annotations

import re
from typing import Any, Mapping

import msgspec
from flask import Response


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, code: str, message: str, details: list[Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message, "details": details or []}}, status, headers)


# An absolute path's directories: a "/" that starts a path (not one inside a URL such as s3://b/k, or a relative path).
_DIRECTORIES = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"]*/)+")


def public_text(message: str) -> str:
    """`message` with every absolute path cut to its last part (/opt/mlops/models/3/MANIFEST -> MANIFEST): what the
    server refused and why, without the layout of its host. The log keeps the whole message."""
    return _DIRECTORIES.sub("", message)
