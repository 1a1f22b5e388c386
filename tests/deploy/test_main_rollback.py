"""`python main.py --rollback` with signed pointers, on the local target: a real gunicorn server follows it back.

Two registered versions are deployed one after the other (each a signed pointer the server's store holds);
`main.py --rollback` moves the champion alias back and deploys version 1 again with a new pointer of a higher
sequence marked as a rollback. The server follows it without a failed request, and the pointer it replaced, put
back in CURRENT by whoever can write the store, is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from include import pipeline
from include.ml import registry, tracking
from include.ml.configuration import ConfigurationManager
from serving import pointer as pointers
from serving import store as store_mod
from tests.support.bundles import register_toy_model
from tests.support.network import free_port, get_json, wait_until
from tests.support.project import run_main
from tests.support.servers import Poller, PredictionServer

pytestmark = pytest.mark.integration  # a real gunicorn server, main.py and `python -m serving` in child processes


def test_main_rollback_is_a_new_signed_pointer_the_server_follows(config_dir: Path, edit_yaml: Any,
                                                                   isolated_env: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("MLOPS_SERVING_URL", f"http://127.0.0.1:{port}")

    def change(data: dict[str, Any]) -> None:
        data["mlflow"]["registered_model_name"] = "toy"
        data["deployment"]["target"] = "local"

    edit_yaml(config_dir / "config.yaml", change)
    cm = ConfigurationManager(config_dir)
    experiment = tracking.configure(cm.config.mlflow)
    assert register_toy_model("toy", experiment) == "1"
    assert register_toy_model("toy", experiment, offset=100.0) == "2"
    pipeline.run_keys(cm)  # the local key pair, made before the server starts: it trusts its public half
    store = cm.config.model_store
    with PredictionServer(store, port, tmp_path / "gunicorn.log",
                          SERVING_PUBLIC_KEY=str(cm.config.signing.public_key)) as server:
        for version in ("1", "2"):
            registry.promote("toy", version, reason="test")
            pipeline.run_deploy(cm, f"deploy-{version}", version)
            assert get_json(f"{server.url}/version")["version"] == version
        forward = pointers.peek(store_mod.read_pointer(store))
        assert forward is not None and (forward.version, forward.rollback) == ("2", False)

        with Poller(server.url) as poller:
            done = run_main("--config-dir", str(config_dir), "--rollback",
                            env={"MLOPS_SERVING_URL": server.url})
        assert done.returncode == 0, done.stdout + done.stderr
        assert not poller.failures(), poller.outcomes
        wait_until(lambda: all(get_json(f"{server.url}/version")["version"] == "1" for _ in range(6)), timeout=60)
        back = pointers.peek(store_mod.read_pointer(store))
        assert back is not None and (back.version, back.rollback) == ("1", True)
        assert back.sequence > forward.sequence and pointers.read_applied(store).sequence == back.sequence

        store_mod.write_pointer(store, forward.envelope)  # the replaced pointer, replayed
        wait_until(lambda: "not above" in ((get_json(f"{server.url}/version").get("refused") or {})
                                           .get("error") or ""), timeout=60)
        assert get_json(f"{server.url}/version")["version"] == "1"
