"""No path of the server's host in what /version and /ready say about a refused bundle (the log keeps it)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from flask import Flask

from serving import store as store_mod
from serving.responses import public_text
from tests.support.pointers import point


def altered_copy(store: Path, version: str) -> None:
    """Bundle "1" copied as `version`, with one signed file changed after signing: refused at the checksum check,
    whose message names the bundle's absolute path."""
    shutil.copytree(store / "1", store / version)
    (store / version / store_mod.METADATA).write_text('{"name": "toy", "version": "9", "changed": true}')


def walk(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in walk(v)]
    if isinstance(value, list):
        return [s for v in value for s in walk(v)]
    return [value] if isinstance(value, str) else []


def assert_no_path(body: Any, store: Path) -> None:
    for text in walk(body):
        assert str(store) not in text and str(store.parent) not in text, text
        assert "/" + store.name + "/" not in text and "/tmp" not in text, text


def test_version_names_the_refused_bundle_without_a_path(make_app: Callable[..., Flask], store: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    altered_copy(store, "9")
    app = make_app()
    point(store, "9")
    with caplog.at_level(logging.ERROR):
        app.extensions["serving"].holder.refresh()
    assert any("refused model 9" in record.getMessage() for record in caplog.records), caplog.text
    answer = app.test_client().get("/version").get_json()
    assert answer["version"] == "1" and answer["refused"]["version"] == "9"
    assert "checksum mismatch" in answer["refused"]["error"]  # still says why
    assert_no_path(answer, store)


def test_ready_names_the_refused_bundle_without_a_path(make_app: Callable[..., Flask], store: Path) -> None:
    altered_copy(store, "9")
    point(store, "9")
    app = make_app()
    response = app.test_client().get("/ready")
    body = response.get_json()
    assert response.status_code == 503 and body["error"]["details"][0]["version"] == "9"
    assert "checksum mismatch" in body["error"]["details"][0]["error"]
    assert_no_path(body, store)


def test_a_refusal_that_names_a_host_path_is_cut_to_its_last_part(store: Path) -> None:
    """The loader's own messages name bundles by version; whatever else may carry a host path (an OS error, a
    library's message) is cut before it is answered."""
    message = f"bundle 9: OSError: [Errno 13] Permission denied: '{store / '9' / 'model' / 'model.skops'}'"
    assert public_text(message) == "bundle 9: OSError: [Errno 13] Permission denied: 'model.skops'"
