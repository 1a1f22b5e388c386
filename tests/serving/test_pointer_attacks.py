"""Issue 22, finding 7: whoever can write a store's CURRENT tries to make a running gunicorn server serve
something the pipeline did not point it at. Every attempt is refused by every worker, the server keeps answering
with the model it had, and a restarted server refuses an older pointer too (<store>/.sequence)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from serving import pointer as pointers
from serving import store as store_mod
from tests.support.bundles import make_bundle
from tests.support.network import free_port, get_json, wait_until
from tests.support.pointers import attacker_key, named, point, pointer_for, signed_statement, token
from tests.support.project import REPO
from tests.support.servers import Poller, PredictionServer
from tests.support.signing import public_key_file

pytestmark = pytest.mark.integration  # real gunicorn servers and `python -m serving` in child processes


def refused_by_every_worker(server: PredictionServer, fragment: str, workers: int = 2) -> None:
    """Wait until `workers` distinct workers report a refusal whose message holds `fragment` (/version names the
    worker; a server with no model answers 503, and then each worker's log line counts)."""
    seen: set[int] = set()

    def check() -> bool:
        try:
            answer = get_json(f"{server.url}/version")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and "model_not_ready" in exc.read().decode()
            logged = server.log_path.read_text(errors="replace").splitlines()
            return sum(1 for line in logged if "refused model" in line and fragment in line) >= workers
        if fragment in ((answer.get("refused") or {}).get("error") or ""):
            seen.add(answer["pid"])
        return len(seen) >= workers

    wait_until(check, timeout=60)


def ready_version(server: PredictionServer) -> str | None:
    """The version /ready reports, None while no model is loaded (503)."""
    try:
        return get_json(f"{server.url}/ready").get("version")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        return None


def serving_cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving", "--store", str(store), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SERVING_PUBLIC_KEY": str(public_key_file())})


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Validly signed bundles outside the store: b1 of this model, 5 of another model."""
    root = tmp_path_factory.mktemp("elsewhere")
    make_bundle(root, "b1", offset=-100.0)
    make_bundle(root, "5", offset=-100.0, name="other-model")
    return root


ATTACKS: dict[str, tuple[Callable[[Path, Path, Path], bytes], str]] = {
    # CURRENT as it was before signed pointers: a plain version name, or a path out of the store
    "plain-text-version": (lambda store, elsewhere, tmp: b"2\n",
                           "is not a signed pointer (ValueError: not a JSON object)"),
    "plain-text-path-outside": (lambda store, elsewhere, tmp: b"../../elsewhere/b1\n",
                                "is not a signed pointer (JSONDecodeError"),
    # a statement signed with the real key, naming a path out of the store
    "signed-path-outside": (lambda store, elsewhere, tmp: signed_statement(version="../../elsewhere/b1"),
                            "names no version directory of this store"),
    # a version directory that is a symlink to a validly signed bundle elsewhere
    "symlinked-version-dir": (lambda store, elsewhere, tmp: (os.symlink(elsewhere / "b1", store / "b1"),
                                                             pointer_for(elsewhere, "b1").envelope)[1],
                              "not a version directory of this store"),
    # a pointer to version 2 signed by a key the server does not trust
    "wrongly-signed": (lambda store, elsewhere, tmp: pointer_for(store, "2", private_key=attacker_key(tmp)).envelope,
                       "which is not trusted here"),
    # another model's validly signed bundle, copied into the store, with a validly signed pointer to it
    "another-models-bundle": (lambda store, elsewhere, tmp: (shutil.copytree(elsewhere / "5", store / "5"),
                                                             pointer_for(store, "5").envelope)[1],
                              "but this server serves 'toy'"),
    # ... or with a pointer that claims this model: the signed manifest names the other one
    "another-models-manifest": (lambda store, elsewhere, tmp: (
        shutil.copytree(elsewhere / "5", store / "5", dirs_exist_ok=True),
        pointer_for(store, "5", model="toy").envelope)[1], "the signed manifest 'other-model' version '5'"),
    # version 2's signed bundle copied under another version name
    "another-versions-manifest": (lambda store, elsewhere, tmp: (shutil.copytree(store / "2", store / "7"),
                                                                 pointer_for(store, "7", model="toy", bundle_sha256=(
                                                                     store_mod.sha256_file(
                                                                         store / "2" / store_mod.MANIFEST)))
                                                                 .envelope)[1],
                                  "the signed manifest is for version '2', not '7'"),
    # a pointer to 2 whose bundle sha256 is not 2's manifest
    "other-bundle-sha256": (lambda store, elsewhere, tmp: pointer_for(store, "2", bundle_sha256="1" * 64).envelope,
                            "this bundle's is"),
}


def test_every_pointer_attack_is_refused_while_the_server_keeps_answering(store: Path, elsewhere: Path,
                                                                          tmp_path: Path) -> None:
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as server, Poller(server.url) as poller:
        for name, (attack, fragment) in ATTACKS.items():
            store_mod.write_pointer(store, attack(store, elsewhere, tmp_path))
            refused_by_every_worker(server, fragment)
            assert get_json(f"{server.url}/version")["version"] == "1", name
        assert "refused model" in server.log()
    assert not poller.failures() and poller.versions() == {"1"}, poller.outcomes


def test_an_older_pointer_is_refused_by_running_and_restarted_servers(store: Path, tmp_path: Path) -> None:
    first = store_mod.read_pointer(store)  # the pointer to version 1 the store started with
    assert first is not None
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as server:
        moved = serving_cli("activate", "2", "--pointer", token(store, "2"), "--url", server.url, store=store)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert pointers.read_applied(store).sequence == json.loads(moved.stdout)["sequence"]  # the store's record
        with Poller(server.url) as poller:
            store_mod.write_pointer(store, first)  # replay: a valid, signed, older pointer
            refused_by_every_worker(server, "not above")
        assert not poller.failures() and poller.versions() == {"2"}, poller.outcomes
        # and the command refuses it as well
        replay = serving_cli("activate", "1", "--pointer", pointers.encode_token(first), store=store)
        assert replay.returncode == 1 and "not above" in json.loads(replay.stdout)["error"]
    # A restarted server has no memory of its own: the store's record (<store>/.sequence) refuses the replay.
    with PredictionServer(store, free_port(), tmp_path / "gunicorn-restarted.log") as server:
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{server.url}/ready")
        assert not_ready.value.code == 503
        refused_by_every_worker(server, "not above")
        # A rollback is a new pointer with a higher sequence: followed.
        point(store, "1", rollback=True)
        wait_until(lambda: ready_version(server) == "1", timeout=60)


def test_a_restarted_server_stays_on_its_model_and_serving_model_name_pins_it(store: Path, elsewhere: Path,
                                                                             tmp_path: Path) -> None:
    moved = serving_cli("activate", "1", "--pointer", token(store, "1"), store=store)
    assert moved.returncode == 0, moved.stdout + moved.stderr  # the store's record now names model toy
    shutil.copytree(elsewhere / "5", store / "5")
    point(store, "5")  # another model's signed bundle and a signed, newer pointer to it
    with PredictionServer(store, free_port(), tmp_path / "gunicorn.log") as server:
        refused_by_every_worker(server, "but this server serves 'toy'")
    # the command refuses it the same way
    other = serving_cli("activate", "5", "--pointer", token(store, "5"), store=store)
    assert other.returncode == 1 and "this server serves 'toy'" in json.loads(other.stdout)["error"]
    # SERVING_MODEL_NAME pins the model explicitly: the pointer to 1 (model toy) is refused by such a server
    point(store, "1")
    with PredictionServer(store, free_port(), tmp_path / "gunicorn-pinned.log",
                          SERVING_MODEL_NAME="other-model") as server:
        refused_by_every_worker(server, "but this server serves 'other-model'")
        point(store, "5")  # and one naming the pinned model is served
        wait_until(lambda: ready_version(server) == "5", timeout=60)
    assert named(store) == "5"
