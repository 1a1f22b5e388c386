"""Issue 23 end to end on one real gunicorn server (2 workers): a 10 % canary answers 10 % +/- 1.5 % of 20,000
requests with the candidate, a client key always lands on the same model, and no request fails under wrk load
across champion -> shadow -> canary -> promote, and across a canary that is aborted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving import store as store_mod
from serving.activation import activate
from serving.pointer import Candidate
from serving.release import in_share
from tests.support.bundles import GOOD_ROW, copy_store
from tests.support.load import WrkLoad, count_answers, require_wrk
from tests.support.network import free_port, get_json, wait_until
from tests.support.releases import candidate, release_pointer
from tests.support.servers import Poller, PredictionServer
from tests.support.signing import trusted_keys

pytestmark = pytest.mark.integration  # a real gunicorn server, and wrk


@pytest.fixture(scope="module")
def served(bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictionServer]:
    """One server for the module: store versions 1 and 2 (predictions 100 apart), champion 1."""
    root = tmp_path_factory.mktemp("release-server")
    store = copy_store(bundles, root / "store", current="1")
    with PredictionServer(store, free_port(), root / "gunicorn.log", workers=2) as server:
        yield server


def switch(server: PredictionServer, champion: str, mode: str | None = None, share: float = 1.0,
           version: str | None = None) -> None:
    """Sign and activate a pointer to `champion` (with candidate `version` in `mode` at `share`), as a release
    step's refresh does, and wait until the server's workers show it."""
    release: Candidate | None = candidate(server.store, version, mode, share) if mode and version else None
    signed = release_pointer(server.store, champion, release)
    with store_mod.locked(server.store):
        activate(server.store, signed.envelope, trusted_keys(), server.url, timeout=60, confirmations=6)


def release_calls(server: PredictionServer) -> Counter:
    """serving_release_requests_total of the whole server (all workers), by (role, outcome)."""
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return Counter({(s.labels["role"], s.labels["outcome"]): s.value for family in text_string_to_metric_families(text)
                    for s in family.samples if s.name == "serving_release_requests_total"})


def test_a_10_percent_canary_answers_10_percent_of_20000_requests(served: PredictionServer) -> None:
    switch(served, "1", "canary", 0.1, "2")
    assert get_json(f"{served.url}/version")["candidate"] == {"version": "2", "mode": "canary", "share": 0.1}
    before = release_calls(served)
    answers = count_answers(served.url, "/predict", [GOOD_ROW], 20_000)
    by_version = Counter({version: n for (status, version, _), n in answers.items() if status == 200})
    assert sum(answers.values()) == sum(by_version.values()) == 20_000, answers  # every answer a 200
    assert set(by_version) == {"1", "2"}
    assert abs(by_version["2"] / 20_000 - 0.10) <= 0.015, by_version
    # the server counts what the clients saw (the champion also scores the candidate's requests off the path);
    # a scorer round writes its figures when it ends, so the counts are waited for

    def counted() -> bool:
        calls = release_calls(served)
        return (calls[("champion", "ok")] - before[("champion", "ok")],
                calls[("candidate", "ok")] - before[("candidate", "ok")]) == (20_000, by_version["2"])
    try:
        wait_until(counted, timeout=20)
    except TimeoutError:
        raise AssertionError(f"the server counted {release_calls(served) - before} for {by_version}") from None
    calls = release_calls(served)
    assert calls[("candidate", "error")] == calls[("champion", "error")] == 0


def test_a_client_key_always_lands_on_the_same_model(served: PredictionServer) -> None:
    switch(served, "1", "canary", 0.1, "2")
    keys = [f"customer-{i}" for i in range(300)]
    answers = count_answers(served.url, "/predict", [GOOD_ROW], 1_200, headers=lambda i: {"X-Client-Key":
                                                                                         keys[i % len(keys)]})
    seen: dict[str, set[str]] = {}
    for (status, version, key), _ in answers.items():
        assert status == 200
        seen.setdefault(key, set()).add(version)
    assert len(seen) == len(keys) and all(len(versions) == 1 for versions in seen.values()), seen
    assert {key for key, versions in seen.items() if versions == {"2"}} == {k for k in keys if in_share(k, 0.1)}


def test_no_request_fails_across_shadow_canary_promote_and_abort(served: PredictionServer, tmp_path: Path) -> None:
    require_wrk()
    switch(served, "1")  # the champion alone
    steps: list[tuple[str, Any]] = [
        ("shadow", ("1", "shadow", 1.0, "2")), ("canary 10 %", ("1", "canary", 0.1, "2")),
        ("canary 50 %", ("1", "canary", 0.5, "2")), ("promote", ("2",)),
        ("next canary", ("2", "canary", 0.2, "1")), ("abort", ("2",)),
    ]
    with WrkLoad(f"{served.url}/predict", [GOOD_ROW], tmp_path, connections=8) as load, \
            Poller(served.url) as poller:
        for _, step in steps:
            switch(served, *step)
    assert load.failed == {}, load.result
    assert poller.failures() == Counter(), poller.outcomes
    assert load.result["requests"] > 1_000 and poller.versions() == {"1", "2"}
    version = get_json(f"{served.url}/version")
    assert (version["version"], version["candidate"]) == ("2", None)  # aborted: the champion alone
    assert "Traceback" not in served.log_path.read_text(errors="replace")
