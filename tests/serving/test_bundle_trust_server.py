"""Hostile bundles against real processes: a running gunicorn server, and `python -m serving refresh` as the
deploy step runs it on every server. The old model keeps answering, the store keeps its version, and the
payload never runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving import store as store_mod
from tests.support.attacks import CASES, tampered
from tests.support.network import get_json, wait_until
from tests.support.pointers import named, point, token
from tests.support.project import REPO
from tests.support.servers import Poller, PredictionServer
from tests.support.signing import public_key_file

pytestmark = pytest.mark.integration
SIGNATURE_CASES = ("unsigned-manifest", "other-key", "signature-of-another-manifest")


@pytest.mark.parametrize("case", CASES)
def test_a_running_server_refuses_a_hostile_bundle_and_keeps_answering(case: str, server: PredictionServer,
                                                                       tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    tampered(server.store / "1", server.store / "9", case, marker, tmp_path / "attacker.key")
    refused_by: set[int] = set()

    def every_worker_refused() -> bool:
        answer = get_json(f"{server.url}/version")
        if (answer.get("refused") or {}).get("version") == "9":
            refused_by.add(answer["pid"])
        return len(refused_by) == 2

    with Poller(server.url) as poller:
        point(server.store, "9")
        wait_until(every_worker_refused, timeout=30)
    assert not poller.failures() and poller.versions() == {"1"}, poller.outcomes
    assert get_json(f"{server.url}/version")["version"] == "1"
    assert not marker.exists()


def refresh(store: Path, source: Path, version: str, *extra: str, pointer: str = "") -> subprocess.CompletedProcess:
    """`python -m serving refresh`, with a signed pointer to <source>/<version> unless `pointer` is given."""
    return subprocess.run([sys.executable, "-m", "serving", "--store", str(store), "refresh", "--source", str(source),
                           "--version", version, "--pointer", pointer or token(source, version), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SERVING_PUBLIC_KEY": str(public_key_file()), "SERVING_URL": ""})


@pytest.mark.parametrize("case", CASES)
def test_the_refresh_command_refuses_a_hostile_bundle(case: str, store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    tampered(store / "1", tmp_path / "releases" / "9", case, marker, tmp_path / "attacker.key")
    done = refresh(store, tmp_path / "releases", "9")
    assert done.returncode == 1, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "failed"
    assert named(store) == "1"
    if case in SIGNATURE_CASES:
        assert "9" not in store_mod.versions(store)  # an unverifiable bundle never enters the store
    assert not marker.exists()


def test_the_refresh_command_refuses_any_manifest_but_the_published_one(store: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(store / "2", tmp_path / "releases" / "2")
    published = store_mod.sha256_file(store / "2" / store_mod.MANIFEST)
    shutil.rmtree(store / "2")
    point(store, "1")
    releases = tmp_path / "releases"
    done = refresh(store, releases, "2", pointer=token(releases, "2", bundle_sha256="0" * 64))
    assert done.returncode == 1 and "is not the manifest this deploy published" in done.stdout
    done = refresh(store, releases, "2", "--manifest-sha256", "0" * 64)
    assert done.returncode == 1 and "differs from the bundle sha256 the pointer names" in done.stdout
    assert "2" not in store_mod.versions(store)
    done = refresh(store, tmp_path / "releases", "2", "--manifest-sha256", published)
    assert done.returncode == 0, done.stdout + done.stderr
    assert named(store) == "2"
