"""`main.py release` and include.release.progressive on the local target, against one real gunicorn server.

One server, one client polling it the whole time: a champion is deployed, then version 2 goes shadow -> canary
(through main.main) -> promote, then version 3 goes canary and is aborted after its bundle was deleted from both
the release store and the server's store. Every step is a signed pointer the server's store holds and its
/version shows; the registry's aliases follow; the client never sees a failed request.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import main
from include import pipeline
from include.ml import registry, tracking
from include.ml.configuration import ConfigurationManager
from include.release import progressive
from serving import pointer as pointers
from serving import store as store_mod
from tests.support.bundles import register_toy_model
from tests.support.network import free_port, get_json, wait_until
from tests.support.servers import Poller, PredictionServer

pytestmark = pytest.mark.integration  # a real gunicorn server, main.py and `python -m serving` in child processes
MODEL = "toy"


def served(url: str) -> tuple[str, dict[str, Any] | None]:
    info = get_json(f"{url}/version")
    return info["version"], info.get("candidate")


def release_pointer(cm: ConfigurationManager) -> pointers.Pointer:
    """The release store's CURRENT (what servers started later boot on)."""
    found = pointers.peek(store_mod.read_pointer(cm.config.artifacts_root / "releases" / MODEL))
    assert found is not None
    return found


def test_shadow_canary_promote_then_an_abort_without_the_candidates_bundle(
        config_dir: Path, edit_yaml: Any, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    monkeypatch.setenv("MLOPS_SERVING_URL", f"http://127.0.0.1:{port}")

    def change(data: dict[str, Any]) -> None:
        data["mlflow"]["registered_model_name"] = MODEL
        data["deployment"].update(target="local", verify_timeout_seconds=60)

    edit_yaml(config_dir / "config.yaml", change)
    cm = ConfigurationManager(config_dir)
    experiment = tracking.configure(cm.config.mlflow)
    assert [register_toy_model(MODEL, experiment, offset=o) for o in (0.0, 100.0, -100.0)] == ["1", "2", "3"]
    pipeline.run_keys(cm)  # the local key pair, made before the server starts: it trusts its public half
    with pytest.raises(progressive.ReleaseError, match="no champion of toy is deployed"):
        progressive.start(cm.config, "2", "shadow", 1.0)

    with PredictionServer(cm.config.model_store, port, tmp_path / "gunicorn.log",
                          SERVING_PUBLIC_KEY=str(cm.config.signing.public_key)) as server:
        registry.promote(MODEL, "1", reason="test")
        pipeline.run_deploy(cm, "deploy-1", "1")
        with Poller(server.url, pause=0.05) as poller:
            shadow = progressive.start(cm.config, "2", "shadow", 1.0)
            assert (shadow.action, shadow.champion, shadow.candidate, shadow.mode, shadow.share) == \
                ("shadow", "1", "2", "shadow", 1.0)
            assert served(server.url) == ("1", {"version": "2", "mode": "shadow", "share": 1.0})
            assert poller.versions() == {"1"}  # a shadow never answers
            assert registry.candidate_version(MODEL) == "2" and registry.champion_version(MODEL) == "1"
            assert json.loads(json.dumps(shadow.xcom()))["candidate"] == "2"

            with pytest.raises(progressive.ReleaseError, match="version 2 is already released as a shadow"):
                progressive.start(cm.config, "3", "canary", 0.1)
            with pytest.raises(progressive.ReleaseError, match="version 1 is the champion"):
                progressive.start(cm.config, "1", "canary", 0.1)
            with pytest.raises(progressive.ReleaseError, match="a fraction in"):
                progressive.start(cm.config, "2", "canary", 10)

            assert main.main(["release", "canary", "--version", "2", "--percent", "50",
                              "--config-dir", str(config_dir)]) == 0
            assert "version 2 is a canary at 50% beside champion 1" in capsys.readouterr().out
            assert served(server.url) == ("1", {"version": "2", "mode": "canary", "share": 0.5})
            wait_until(lambda: poller.versions() == {"1", "2"}, timeout=30)  # both answer now

            assert main.main(["release", "status", "--json", "--config-dir", str(config_dir)]) == 0
            status = json.loads(capsys.readouterr().out)
            assert (status["champion"], status["candidate"]["version"], status["candidate"]["mode"],
                    status["candidate"]["share"]) == ("1", "2", "canary", 0.5)
            assert status["urls"] == [server.url] and status["drifted"] == []
            assert status["instances"][0]["candidate"] == {"version": "2", "mode": "canary", "share": 0.5}

            canary_pointer = release_pointer(cm)
            promoted = progressive.promote(cm.config)
            assert (promoted.champion, promoted.candidate, promoted.version) == ("2", None, "2")
            assert served(server.url) == ("2", None)
            assert registry.champion_version(MODEL) == "2" and registry.candidate_version(MODEL) is None
            after = release_pointer(cm)
            assert (after.version, after.candidate, after.rollback) == ("2", None, False)
            assert after.sequence > canary_pointer.sequence
            with pytest.raises(progressive.ReleaseError, match="no release of toy is running"):
                progressive.promote(cm.config)

            progressive.start(cm.config, "3", "canary", 0.1)
            assert served(server.url) == ("2", {"version": "3", "mode": "canary", "share": 0.1})
            for store in (cm.config.artifacts_root / "releases" / MODEL, cm.config.model_store):
                shutil.rmtree(store / "3")  # the candidate's bundle is gone everywhere: abort needs only the champion
            aborted = progressive.abort(cm.config, "a test abort")
            assert (aborted.action, aborted.version, aborted.champion, aborted.candidate) == ("abort", "3", "2", None)
            assert "release of version 3 aborted (a test abort); champion 2 answers 100%" in aborted.summary()
            assert served(server.url) == ("2", None)

            # A deploy during a release ends it: the pointer it sends names no candidate, the alias goes too.
            progressive.start(cm.config, "1", "shadow", 1.0)
            pipeline.run_deploy(cm, "deploy-2-again", "2")
            assert served(server.url) == ("2", None) and registry.candidate_version(MODEL) is None
        assert not poller.failures(), poller.outcomes
        assert registry.candidate_version(MODEL) is None and registry.champion_version(MODEL) == "2"
        from mlflow.tracking import MlflowClient

        assert MlflowClient().get_model_version(MODEL, "3").tags[progressive.ABORTED_TAG] == "a test abort"
        assert MlflowClient().get_model_version(MODEL, "1").tags[progressive.ABORTED_TAG] == \
            "ended by the deploy of version 2"
        assert release_pointer(cm).candidate is None
        assert progressive.status(cm.config).drifted() == []
