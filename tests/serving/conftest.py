"""Fixtures for the prediction server: real bundles in a temp store, the app, its test client, a real gunicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.app import create_app
from tests.support.bundles import copy_store, make_bundle
from tests.support.network import free_port
from tests.support.servers import PredictionServer
from tests.support.signing import public_key_file
from tests.support.typed import make_typed_bundle


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: "1" and "2" (regression, predictions 100 apart) and "c1" (classification)."""
    source = tmp_path_factory.mktemp("bundles")
    make_bundle(source, "1")
    make_bundle(source, "2", offset=100.0)
    make_bundle(source, "c1", task="classification", name="toy-classifier")
    return source


@pytest.fixture
def store(bundles: Path, tmp_path: Path) -> Path:
    return copy_store(bundles, tmp_path / "store", current="1")


@pytest.fixture(scope="session")
def typed_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once, on the table of every column type and role (tests/support/typed.py): "t1" (regression, histogram
    gradient boosting) and "tc1" (classification, random forest)."""
    source = tmp_path_factory.mktemp("typed-bundles")
    make_typed_bundle(source, "t1")
    make_typed_bundle(source, "tc1", task="classification", family="random_forest", name="flights-late")
    return source


@pytest.fixture
def typed_store(typed_bundles: Path, tmp_path: Path) -> Path:
    return copy_store(typed_bundles, tmp_path / "typed-store", current="t1")


@pytest.fixture
def make_app(store: Path) -> Iterator[Any]:
    apps: list[Flask] = []

    def make(**settings: Any) -> Flask:
        app = create_app({"model_store": store, "poll_seconds": 0, "public_key": public_key_file(), **settings})
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["serving"].holder.stop()


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def server(store: Path, tmp_path: Path) -> Iterator[PredictionServer]:
    """A real gunicorn prediction server on `store` (tests using it are marked integration)."""
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as running:
        yield running
