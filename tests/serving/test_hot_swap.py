"""Hot swap on a real gunicorn server under concurrent load: no failed request, broken models refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from serving import store as store_mod
from tests.support.bundles import GOOD_ROW, break_bundle, make_bundle
from tests.support.network import free_port, get_json, wait_until
from tests.support.pointers import named, point, token
from tests.support.project import REPO
from tests.support.servers import PredictionServer
from tests.support.signing import public_key_file

pytestmark = pytest.mark.integration  # real gunicorn servers, and `python -m serving` in child processes


@dataclass
class Load:
    """Client threads posting /predict until stopped, recording every outcome in order."""

    url: str
    clients: int = 8
    outcomes: list[tuple[float, int | str, str | None, float | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        body = json.dumps(GOOD_ROW).encode()
        while not self._stop.is_set():
            request = urllib.request.Request(f"{self.url}/predict", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    data = json.loads(response.read())
                    outcome = (time.monotonic(), response.status, data["model"]["version"], data["predictions"][0])
            except urllib.error.HTTPError as exc:
                outcome = (time.monotonic(), exc.code, None, None)
            except Exception as exc:  # noqa: BLE001 - a connection error is exactly what we count
                outcome = (time.monotonic(), type(exc).__name__, None, None)
            with self._lock:
                self.outcomes.append(outcome)

    def __enter__(self) -> "Load":
        self._threads = [threading.Thread(target=self._client) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def failures(self) -> Counter:
        return Counter(status for _, status, _, _ in self.outcomes if status != 200)


def serving_cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving", "--store", str(store), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SERVING_PUBLIC_KEY": str(public_key_file())})


def test_swap_under_load_drops_nothing(server: PredictionServer) -> None:
    with Load(server.url) as load:
        wait_until(lambda: len(load.outcomes) > 500)
        done = serving_cli("activate", "2", "--pointer", token(server.store, "2"), "--url", server.url,
                           store=server.store)
        switched_at = time.monotonic()
        # thousands of requests in all, hundreds of them after the switch (however slow the machine)
        wait_until(lambda: len(load.outcomes) >= 2000 and sum(1 for o in load.outcomes if o[0] > switched_at) > 500,
                   timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["version"] == "2"
    assert len(load.outcomes) >= 2000
    assert load.failures() == Counter(), server.log()
    versions = [v for _, _, v, _ in load.outcomes]
    assert {"1", "2"} <= set(versions)
    # every answer came from the model it names (version 2 was trained on a target shifted by 100)
    assert all((p > 50) == (v == "2") for _, _, v, p in load.outcomes)
    after = [v for t, _, v, _ in load.outcomes if t > switched_at]
    assert set(after) == {"2"}
    assert named(server.store) == "2" and named(server.store, "PREVIOUS") == "1"


def test_broken_model_refused_while_old_keeps_answering(server: PredictionServer) -> None:
    break_bundle(make_bundle(server.store, "3"))
    refused = serving_cli("activate", "3", "--pointer", token(server.store, "3"), "--url", server.url,
                          store=server.store)
    assert refused.returncode == 1 and "refused" in refused.stdout
    assert named(server.store) == "1"  # the command never moved the pointer

    # Bypass the command's own check: the workers themselves must refuse it.
    with Load(server.url, clients=4) as load:
        wait_until(lambda: len(load.outcomes) > 100)
        point(server.store, "3")
        wait_until(lambda: all((get_json(f"{server.url}/version").get("refused") or {}).get("version") == "3"
                               for _ in range(6)))
        count = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) > count + 300)
    assert load.failures() == Counter(), server.log()
    assert {v for _, _, v, _ in load.outcomes} == {"1"}
    assert get_json(f"{server.url}/ready")["version"] == "1"
    assert "refused model 3" in server.log()
    metrics = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
    # both workers refused it, and the sum across workers says so
    assert 'serving_model_loads_total{outcome="refused",version="3"} 2.0' in metrics
    assert f'serving_predictions_total{{model="toy",version="1"}} {float(len(load.outcomes) + 0)}' in metrics


def test_activation_reverts_when_the_server_does_not_switch(server: PredictionServer, tmp_path: Path) -> None:
    other_store = tmp_path / "other"
    make_bundle(other_store, "2", offset=100.0)
    # The server follows server.store, never other_store, so it cannot confirm version 2 there.
    point(other_store, "1", model="toy", bundle_sha256="0" * 64)  # an earlier version, pruned since
    result = serving_cli("activate", "2", "--pointer", token(other_store, "2"), "--url", server.url, "--timeout", "3",
                         store=other_store)
    assert result.returncode == 1 and "did not switch to version 2" in result.stdout
    assert named(other_store) == "1"


def test_activate_is_idempotent_and_rollback_returns_to_previous(server: PredictionServer) -> None:
    to_2 = token(server.store, "2")
    first = serving_cli("activate", "2", "--pointer", to_2, "--url", server.url, store=server.store)
    again = serving_cli("activate", "2", "--pointer", to_2, "--url", server.url, store=server.store)
    assert json.loads(first.stdout)["changed"] is True and json.loads(again.stdout)["changed"] is False
    # rollback cannot sign: it takes a signed rollback pointer to PREVIOUS, with a higher sequence
    not_a_rollback = serving_cli("rollback", "--pointer", token(server.store, "1"), store=server.store)
    assert not_a_rollback.returncode == 1 and "is no rollback" in json.loads(not_a_rollback.stdout)["error"]
    back = serving_cli("rollback", "--pointer", token(server.store, "1", rollback=True), "--url", server.url,
                       store=server.store)
    assert back.returncode == 0, back.stdout + back.stderr
    assert json.loads(back.stdout)["rollback"] is True
    assert get_json(f"{server.url}/version")["version"] == "1"
    assert sorted(store_mod.versions(server.store)) == ["1", "2", "c1"]  # nothing deleted
    # the pointer to version 2 it replaced is never followed again: its sequence is lower
    replay = serving_cli("activate", "2", "--pointer", to_2, store=server.store)
    assert replay.returncode == 1 and "not above" in json.loads(replay.stdout)["error"]


NO_BUNDLE = {"model": "toy", "bundle_sha256": "0" * 64}


@pytest.mark.parametrize("args, fragment", [
    (["activate", "9", "--pointer", "{9}"], "not in this store"),
    (["activate", "../etc", "--pointer", "{1}"], "does not name version ../etc"),
    (["activate", "1", "--pointer", "not a token!"], "pointer token is base64url"),
    (["rollback", "--pointer", "{1}"], "no (signed) PREVIOUS pointer"),
])
def test_cli_bad_requests_fail_clearly(store: Path, args: list[str], fragment: str) -> None:
    args = [token(store, a[1:-1], **(NO_BUNDLE if a == "{9}" else {})) if a.startswith("{") else a for a in args]
    result = serving_cli(*args, store=store)
    assert result.returncode == 1 and fragment in json.loads(result.stdout)["error"]
    assert named(store) == "1"


def test_tampered_bundle_is_refused(store: Path) -> None:
    to_2 = token(store, "2")
    with (store / "2" / "bundle.json").open("a") as fh:
        fh.write(" ")
    result = serving_cli("activate", "2", "--pointer", to_2, store=store)
    assert result.returncode == 1 and "checksum mismatch for bundle.json" in result.stdout


def test_server_starts_on_an_empty_store_and_picks_up_the_first_model(tmp_path: Path, bundles: Path) -> None:
    empty = tmp_path / "empty"
    with PredictionServer(empty, free_port(), tmp_path / "log") as server:
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{server.url}/ready")
        assert not_ready.value.code == 503
        make_bundle(empty, "1")
        assert serving_cli("activate", "1", "--pointer", token(empty, "1"), "--url", server.url,
                           store=empty).returncode == 0
        assert get_json(f"{server.url}/ready")["version"] == "1"
