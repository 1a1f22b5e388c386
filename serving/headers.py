"""Security headers on every response of the server: what a browser may load, run and frame.

- Every response: `X-Content-Type-Options: nosniff` (a JSON body is never sniffed into HTML), framing refused
  (`frame-ancestors 'none'`, and `X-Frame-Options: DENY` for browsers without CSP 3), no Referer sent on.
- The form page (/) loads its own script and style (serving/static/), calls the API on the same origin, and nothing
  else: no inline script or style, no other origin.
- The model card (/model-card) is HTML built from config and data values: it runs in a CSP sandbox (a unique origin,
  no script, no forms), may use its inline styles and data: images, and nothing else.
- Anything else (JSON, metrics, static files): nothing may load or run at all.
"""

from __future__ import annotations

from flask import Flask, Response, request

PAGE = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
CARD = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'")
OTHER = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
POLICIES = {"serving.index": PAGE, "serving.model_card": CARD}
COMMON = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def register(app: Flask) -> None:
    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = POLICIES.get(request.endpoint or "", OTHER)
        response.headers.update(COMMON)
        return response
