"""Hot swap between engines on a real gunicorn server under load: ONNX Runtime -> sklearn -> ONNX Runtime, no loss."""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from include.release.verify import verify_fleet
from tests.support.bundles import make_bundle
from tests.support.network import get_json, wait_until
from tests.support.pointers import point
from tests.support.servers import Poller, PredictionServer
from tests.support.signing import trusted_keys

pytestmark = pytest.mark.integration  # a real gunicorn server


def _all_workers_serve(server: PredictionServer, version: str) -> bool:
    return all(get_json(f"{server.url}/version")["version"] == version for _ in range(8))


def _answered(pollers: list[Poller]) -> int:
    return sum(p.outcomes.total() for p in pollers)


def test_swap_between_engines_under_load_drops_nothing(server: PredictionServer, tmp_path: Path) -> None:
    # A Poisson-loss gradient boosting has no converter: sklearn serves it, and says why.
    make_bundle(server.store, "s", offset=100.0, family="hist_gradient_boosting",
                hyperparameters={"loss": "poisson", "max_iter": 20})
    pollers = [Poller(server.url) for _ in range(4)]
    for poller in pollers:
        poller.__enter__()
    try:
        wait_until(lambda: _answered(pollers) > 100)
        for version in ("s", "1"):
            point(server.store, version)
            wait_until(lambda v=version: _all_workers_serve(server, v), timeout=60)
            count = _answered(pollers)
            wait_until(lambda n=count: _answered(pollers) > n + 100, timeout=120)
            info = get_json(f"{server.url}/version")
            assert info["engine"] == ("sklearn" if version == "s" else "onnxruntime"), info
            if version == "s":
                assert "NotImplementedError" in info["engine_fallback_reason"]
            else:
                assert info["engine_fallback_reason"] is None
    finally:
        for poller in pollers:
            poller.__exit__(None, None, None)
    assert sum((p.failures() for p in pollers), Counter()) == Counter(), server.log()
    assert set().union(*(p.versions() for p in pollers)) == {"1", "s"}
    metrics = urllib.request.urlopen(f"{server.url}/metrics").read().decode()
    assert 'serving_engine{engine="onnxruntime",reason="",version="1"} 1.0' in metrics
    assert 'serving_engine{engine="sklearn",reason="NotImplementedError: ' in metrics
    # The deploy verify step computes its expected answers with the same engine choice, and the server agrees.
    verified = verify_fleet("1", [{"instance_id": "i-1", "url": server.url}], server.store / "1", tmp_path,
                            trusted_keys())
    assert verified.engine == "onnxruntime" and list(verified.servers) == ["i-1"]
