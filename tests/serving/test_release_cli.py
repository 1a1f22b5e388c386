"""Issue 23: `python -m serving refresh/activate/status` with a pointer that names a release (in process: the
commands' main(), on a real store with real signed bundles)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from serving import pointer as pointers
from serving import store as store_mod
from serving.__main__ import main
from tests.support.bundles import break_bundle
from tests.support.pointers import named
from tests.support.releases import candidate, release_pointer
from tests.support.signing import public_key_file


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: Path) -> Any:
    monkeypatch.setenv("SERVING_PUBLIC_KEY", str(public_key_file()))

    def run(*args: str) -> tuple[int, dict[str, Any]]:
        code = main(["--store", str(store), *args])
        return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return run


def test_refresh_fetches_the_candidate_and_activates_the_release(cli: Any, store: Path, tmp_path: Path) -> None:
    source = tmp_path / "published"
    source.mkdir()
    (store / "2").rename(source / "2")  # the candidate is only in the published store
    release = release_pointer(store, "1", candidate(source, "2", "shadow", 0.2))
    before = store_mod.read_pointer(store)
    code, wrong = cli("refresh", "--source", str(source), "--version", "3", "--pointer", release.token)
    assert code == 1 and "does not name version 3: it names 1 or its candidate 2" in wrong["error"]
    code, done = cli("refresh", "--source", str(source), "--version", "2", "--pointer", release.token)
    assert code == 0, done
    assert done["candidate"] == {"version": "2", "bundle_sha256": release.candidate.bundle_sha256, "mode": "shadow",
                                 "share": 0.2}
    assert done["version"] == "1" and done["changed"] is True
    assert done["previous_pointer"] == pointers.encode_token(before)  # what an undo puts back
    assert (store / "2").is_dir() and store_mod.read_pointer(store) == release.envelope
    assert store_mod.read_pointer(store, store_mod.PREVIOUS) is None  # the champion did not change
    code, status = cli("status")
    assert code == 0 and status["current"]["candidate"]["version"] == "2"
    # promote: the candidate's bundle is already there
    promote = release_pointer(store, "2", None)
    code, done = cli("activate", "2", "--pointer", promote.token)
    assert code == 0 and done["candidate"] is None and done["previous"] == "1"
    assert named(store) == "2" and named(store, store_mod.PREVIOUS) == "1"


def test_activate_refuses_a_release_whose_candidate_does_not_load(cli: Any, store: Path) -> None:
    break_bundle(store / "2")
    release = release_pointer(store, "1", candidate(store, "2", "canary", 0.1))
    before = store_mod.read_pointer(store)
    code, failed = cli("activate", "1", "--pointer", release.token)
    assert code == 1 and failed["error"].startswith("refused: bundle 2:")
    assert store_mod.read_pointer(store) == before  # nothing written


def test_activate_refuses_a_release_whose_candidate_is_missing(cli: Any, store: Path) -> None:
    release = release_pointer(store, "1", candidate(store, "2", "canary", 0.1))
    shutil.rmtree(store / "2")
    code, failed = cli("activate", "2", "--pointer", release.token)
    assert code == 1 and "candidate version 2, which is not in this store" in failed["error"]


def test_a_server_new_to_a_release_fetches_both_bundles_it_names(cli: Any, store: Path, tmp_path: Path) -> None:
    """An instance that boots during a release refreshes with the release pointer: it holds neither model yet, and
    must fetch the champion's bundle as well as the one its --version names."""
    source = tmp_path / "published"
    shutil.copytree(store, source)
    release = release_pointer(source, "1", candidate(source, "2", "canary", 0.1))
    for entry in list(store.iterdir()):  # a new instance: an empty store
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    code, done = cli("refresh", "--source", str(source), "--version", "2", "--pointer", release.token)
    assert code == 0, done
    assert (done["version"], done["candidate"]["version"]) == ("1", "2")
    assert {"1", "2"} <= set(store_mod.versions(store)) and store_mod.read_pointer(store) == release.envelope
