"""JSON responses, and the one error shape every endpoint answers with."""

from __future__ import annotations

from typing import Any, Mapping

import msgspec
from flask import Response


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, code: str, message: str, details: list[Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message, "details": details or []}}, status, headers)
