"""The rollout's release parts against the in-memory fakes of test_rollout.py: what a release step moves the fleet
to (`Move`), an abort's retreat (the store's pointer first, every server tried, nothing undone), and the undo's
rollback pointer keeping the release the server had."""

from __future__ import annotations

import pytest

from include.ml.exceptions import DeploymentError
from include.release.rollout import Move, move_fleet
from include.release.signing import LocalSigner, PointerSigner, sign_pointer
from serving import pointer as pointers
from tests.deploy.test_rollout import MANIFEST_SHA256, MODEL, FakeFleet, FakeRunner, FakeStore, Hosts, fleet_of
from tests.support.signing import signing_config, trusted_keys

CANARY = pointers.Candidate("3", "3" * 64, "canary", 0.1)


def signer() -> PointerSigner:
    return PointerSigner(LocalSigner(signing_config().private_key), trusted_keys(), MODEL)


def retreat(hosts: Hosts, runner: FakeRunner, store: FakeStore) -> None:
    move_fleet(store, FakeFleet(fleet_of(3)), runner, Move("1", MANIFEST_SHA256), target="ec2", model_name=MODEL,
               batch_size=1, verify_timeout=5.0, pointers=signer(), retreat=True)


def test_a_release_step_fetches_the_candidate_and_expects_both_models() -> None:
    shadow = Move("1", "1" * 64, pointers.Candidate("2", "2" * 64, "shadow", 0.25))
    assert shadow.fetch == ("2", "2" * 64)  # the champion's bundle is on every server already
    assert shadow.expected_candidate() == {"version": "2", "mode": "shadow", "share": 0.25}
    assert shadow.describe() == "version 1 + candidate 2 (shadow 25%)"
    promoted = Move("2", "2" * 64)
    assert (promoted.fetch, promoted.expected_candidate(), promoted.describe()) == \
        (("2", "2" * 64), None, "version 2")


def test_a_retreat_moves_the_store_first_and_tries_every_server_though_one_fails() -> None:
    hosts = Hosts(current={"i-1": "2", "i-2": "2", "i-3": "2"})
    store, runner = FakeStore(pointer="2", events=hosts.events), FakeRunner(hosts, fail_refresh={"i-2"})
    with pytest.raises(DeploymentError) as failed:
        retreat(hosts, runner, store)
    assert "1 of 3 server(s) did not move to version 1" in str(failed.value)
    assert "instance i-2: the refresh command failed" in str(failed.value)
    assert "run it again" in str(failed.value)
    # the pointer first (servers started from now on boot on it), then every server; nothing undone
    assert hosts.events == [("pointer", "1"), ("refresh", "i-1"), ("refresh", "i-2"), ("refresh", "i-3")]
    assert [command.action for _, command, _ in runner.calls] == ["refresh"] * 3
    assert hosts.current == {"i-1": "1", "i-2": "2", "i-3": "1"}


def test_a_runner_that_breaks_on_one_server_does_not_stop_a_retreat() -> None:
    hosts = Hosts(current={"i-1": "2", "i-2": "2", "i-3": "2"})
    runner = FakeRunner(hosts, raise_on={"i-1": TimeoutError("SSM did not answer")})
    with pytest.raises(DeploymentError, match="instance i-1: TimeoutError: SSM did not answer"):
        retreat(hosts, runner, FakeStore(pointer="2"))
    assert hosts.current == {"i-1": "2", "i-2": "1", "i-3": "1"}


def test_the_undo_of_a_release_step_goes_back_to_the_release_the_server_had() -> None:
    earlier = sign_pointer(LocalSigner(signing_config().private_key), MODEL, "1", "1" * 64, candidate=CANARY)
    back = signer().rollback_to(earlier.token)
    assert (back.version, back.rollback, back.candidate) == ("1", True, CANARY)
    assert back.sequence > earlier.sequence
