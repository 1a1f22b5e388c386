"""Security headers on every route and response of the server (serving/headers.py): nosniff and no framing
everywhere, a CSP with no inline script or style on the form page, a sandbox on the model card, nothing loadable
elsewhere. The browser side (a script in a served card does not run) is tests/serving/test_security_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.bundles import add_card

CARD = "<html><body><h1>card</h1><p style='color:red'>ok</p></body></html>"


def policy(response: Any) -> dict[str, str]:
    parts = [part.strip() for part in response.headers["Content-Security-Policy"].split(";") if part.strip()]
    return {name: value for name, _, value in (part.partition(" ") for part in parts)}


def assert_common(response: Any, where: str) -> None:
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("X-Frame-Options") == "DENY", where
    csp = policy(response)
    assert csp.get("frame-ancestors") == "'none'" and csp.get("default-src") == "'none'", (where, csp)
    assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"], where


def every_request(app: Flask) -> list[tuple[str, str]]:
    """One request per route and method of the app's URL map (static: each file the form page uses)."""
    requests = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if rule.endpoint == "static":
                requests += [(method, "/static/form.js"), (method, "/static/form.css")]
            else:
                requests.append((method, re.sub(r"<[^>]+>", "x", rule.rule)))
    return requests


@pytest.fixture
def carded_app(store: Path, make_app: Any) -> Flask:
    add_card(store / "1", CARD)
    return make_app()


def test_every_route_and_error_carries_the_headers(carded_app: Flask) -> None:
    client = carded_app.test_client()
    requests = every_request(carded_app)
    paths = {path for _, path in requests}
    assert {"/", "/model-card", "/health", "/ready", "/version", "/metrics", "/openapi.json", "/predict",
            "/invocations", "/static/form.js"} <= paths, paths
    for method, path in requests:
        response = client.open(path, method=method, json={"not": "a row"} if method == "POST" else None)
        assert_common(response, f"{method} {path} -> {response.status_code}")
    # Errors too: an unknown route (404), a wrong method (405), a body the API refuses (400/415).
    for method, path, body in (("GET", "/nothing-here", None), ("DELETE", "/predict", None),
                               ("POST", "/predict", b"not json")):
        response = client.open(path, method=method, data=body, content_type="text/plain")
        assert response.status_code >= 400
        assert_common(response, f"{method} {path} -> {response.status_code}")


class _Inline(HTMLParser):
    """Inline script, inline style and event-handler attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src") or tag == "style":
            self.found.append(f"<{tag}>")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]


def test_the_form_page_runs_only_its_own_script_and_style(carded_app: Flask) -> None:
    response = carded_app.test_client().get("/")
    csp = policy(response)
    assert (csp["script-src"], csp["style-src"], csp["connect-src"]) == ("'self'", "'self'", "'self'"), csp
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert csp["base-uri"] == "'none'" and csp["form-action"] == "'self'"
    page = _Inline()
    page.feed(response.get_data(as_text=True))
    assert page.found == [], page.found  # so the policy above costs the page nothing
    assert '<script src="/static/form.js">' in response.get_data(as_text=True)


def test_the_card_is_sandboxed_and_json_loads_nothing(carded_app: Flask) -> None:
    client = carded_app.test_client()
    card = policy(client.get("/model-card"))
    assert "sandbox" in card and card["sandbox"] == "", card  # no allow-scripts, no allow-same-origin
    assert "script-src" not in card and card["style-src"] == "'unsafe-inline'" and card["img-src"] == "data:"
    for path in ("/version", "/health", "/metrics", "/openapi.json"):
        csp = policy(client.get(path))
        assert set(csp) == {"default-src", "base-uri", "form-action", "frame-ancestors"}, (path, csp)
