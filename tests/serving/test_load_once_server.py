"""Issue 22, finding 3 against real gunicorn workers: while a thread swaps version 2's model file and card with
hostile twins in a tight loop, the workers load version 2 again and again; every answer and every card they serve
is the signed one (or the worker refused the bundle and kept its model)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.bundles import GOOD_ROW
from tests.support.network import free_port, get_json, wait_until
from tests.support.pointers import point
from tests.support.race import SIGNED_CARD, Swapper, race_store
from tests.support.servers import PredictionServer

pytestmark = pytest.mark.integration  # real gunicorn servers


def test_gunicorn_workers_serve_only_the_signed_model_and_card_while_files_are_swapped(bundles: Path,
                                                                                       tmp_path: Path) -> None:
    store, hostile = race_store(bundles, tmp_path)
    answers: list[tuple[str, float]] = []  # (version, prediction) of every /predict answer
    cards: list[tuple[int, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(url: str) -> None:
        body = json.dumps(GOOD_ROW).encode()
        while not stop.is_set():
            request = urllib.request.Request(f"{url}/predict", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    data = json.loads(response.read())
                    answers.append((data["model"]["version"], data["predictions"][0]))
                with urllib.request.urlopen(f"{url}/model-card", timeout=10) as response:
                    cards.append((response.status, response.read().decode()))
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    cards.append((404, ""))  # version 1 has no card
                else:
                    failures.append(f"HTTP {exc.code}")
            except OSError as exc:
                failures.append(type(exc).__name__)

    def settled(url: str, version: str) -> bool:
        answer = get_json(f"{url}/version")
        return answer["version"] == version or (answer.get("refused") or {}).get("version") == version

    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log", SERVING_POLL_SECONDS="0.05") as server:
        thread = threading.Thread(target=client, args=(server.url,), daemon=True)
        thread.start()
        with Swapper(hostile):
            for version in ("2", "1") * 4:  # every switch to 2 is a fresh load in both workers, mid-swap
                point(store, version)
                wait_until(lambda v=version: settled(server.url, v), timeout=60)
        point(store, "2")  # the files at rest again: the workers load the signed 2
        wait_until(lambda: all(get_json(f"{server.url}/version")["version"] == "2" for _ in range(6)), timeout=60)
        wait_until(lambda: sum(1 for v, _ in answers if v == "2") > 20, timeout=60)
        stop.set()
        thread.join()
    assert not failures, failures
    # version 2 predicts about 100 for GOOD_ROW, the hostile model file about -100, version 1 about 0
    assert all(prediction > 50 for version, prediction in answers if version == "2"), answers
    assert all(prediction < 50 for version, prediction in answers if version == "1"), answers
    assert {text for _, text in cards} <= {SIGNED_CARD, ""} and (200, SIGNED_CARD) in cards
