"""`include.release.rollout.rollout()` against in-memory fakes of the three Protocols of `include/release/ports.py`.

A BundleStore that records what is published and every pointer read and write, a Fleet of N instances, and a
CommandRunner that answers each command as `python -m serving` does (one JSON line), keeps each instance's store
pointer, can fail (or raise) on a chosen instance, and records every command in order. Instances have no URL, so
verification is skipped and only logged, except in the tests that verify against a tiny HTTP server in a thread.
The store's pointer (what servers started later boot with) moves only once every server is verified. Every
command carries a pointer signed with the tests' key (serving/pointer.py): the fake runner verifies it, checks it
names the commanded version (a rollback pointer for the undo's activate), and records the command with the token
replaced by ANY.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.ml.exceptions import DeploymentError
from include.release.command_document import check_command
from include.release.ports import (
    BundleStore,
    CommandResult,
    CommandRunner,
    DeploymentResult,
    Fleet,
    Instance,
    ServingCommand,
)
from include.release.rollout import activate_command, refresh_command, rollout
from include.release.signing import LocalSigner, PointerSigner, sign_pointer
from serving import pointer as pointers
from tests.support.pointers import attacker_key, signed_statement
from tests.support.signing import signing_config, trusted_keys

SOURCE = "s3://releases/models/toy"
MODEL = "toy"
MANIFEST = "0" * 64 + "  bundle.json\n"  # the published bundle's manifest: its digest rides on every refresh
MANIFEST_SHA256 = hashlib.sha256(MANIFEST.encode()).hexdigest()
ANY = "<pointer>"  # what the fake runner records in place of each (verified) pointer token
REFRESH = refresh_command(SOURCE, "2", MANIFEST_SHA256, pointer=ANY)
ROLL_BACK_TO_1 = activate_command("1", pointer=ANY)
REFRESH_COMMENT = f"refresh {MODEL} to version 2"


def signed(version: str) -> pointers.Pointer:
    """A pointer to `version` as an earlier deploy signed it."""
    return sign_pointer(LocalSigner(signing_config().private_key), MODEL, version, "1" * 64)


# --- the fakes ----------------------------------------------------------------------------------------------------


@dataclass
class FakeStore:
    """Where bundles are published: records every call, in order."""

    pointer: str | None = "1"
    source: str = SOURCE
    calls: list[tuple[str, ...]] = field(default_factory=list)
    events: list[tuple[str, ...]] | None = None  # shared with the hosts' events, to see when the pointer moves

    def publish(self, bundle: Path, version: str) -> None:
        self.calls.append(("publish", str(bundle), version))

    written: pointers.Pointer | None = None

    def read_pointer(self) -> bytes | None:
        self.calls.append(("read_pointer",))
        return signed(self.pointer).envelope if self.pointer else None

    def write_pointer(self, envelope: bytes) -> None:
        self.written = pointers.verify(envelope, trusted_keys())
        version = self.written.version
        self.calls.append(("write_pointer", version))
        if self.events is not None:
            self.events.append(("pointer", version))
        self.pointer = version


@dataclass
class FakeFleet:
    servers: list[Instance]

    def instances(self) -> list[Instance]:
        return list(self.servers)


@dataclass
class Hosts:
    """What each instance has: its store's CURRENT and PREVIOUS, and the version its server answers with."""

    current: dict[str, str | None]
    previous: dict[str, str | None] = field(default_factory=dict)
    served: dict[str, str | None] = field(default_factory=dict)
    stuck: set[str] = field(default_factory=set)  # servers that never follow their store's pointer
    forged: dict[str, str] = field(default_factory=dict)  # a tampered store's previous pointer, reported as it is
    events: list[tuple[str, ...]] = field(default_factory=list)  # commands and verifications, in order

    def __post_init__(self) -> None:
        self.served = {**self.current, **self.served}

    def switch(self, instance_id: str, version: str) -> dict[str, Any]:
        """`serving.activation.activate` on the instance: move CURRENT (the old one becomes PREVIOUS)."""
        before = self.current[instance_id]
        if before != version:
            self.previous[instance_id], self.current[instance_id] = before, version
            if instance_id not in self.stuck:
                self.served[instance_id] = version
        previous = before if before != version else self.previous.get(instance_id)
        return {"status": "active", "name": MODEL, "version": version, "previous": previous,
                "previous_pointer": self.forged.get(instance_id) or (signed(previous).token if previous else None),
                "changed": before != version}


@dataclass
class FakeRunner:
    """Answers `python -m serving refresh|activate` with its JSON line; fails or raises on chosen instances."""

    hosts: Hosts
    fail_refresh: set[str] = field(default_factory=set)  # exit 1, as when the bundle is refused
    fail_activate: set[str] = field(default_factory=set)  # the rollback command fails there
    raise_on: dict[str, Exception] = field(default_factory=dict)  # the runner itself breaks (e.g. SSM unreachable)
    calls: list[tuple[str, ServingCommand, str]] = field(default_factory=list)
    sent: list[pointers.Pointer] = field(default_factory=list)  # every pointer sent, verified, in order

    def run(self, instance: Instance, command: ServingCommand, comment: str) -> CommandResult:
        iid = instance.instance_id
        check_command(command)  # as SsmRunner and ShellRunner do before anything runs
        sent = pointers.verify(pointers.decode_token(command.parameters["pointer"]), trusted_keys())
        self.sent.append(sent)
        self.calls.append((iid, replace(command, parameters={**command.parameters, "pointer": ANY}), comment))
        if iid in self.raise_on:
            raise self.raise_on[iid]
        self.hosts.events.append((command.action, iid))
        version = command.parameters["version"]
        if command.action == "refresh":
            assert command.parameters["source"] == SOURCE
            assert command.parameters["manifestSha256"] == MANIFEST_SHA256
            if iid in self.fail_refresh:
                return answer(1, {"status": "failed", "command": "refresh",
                                  "error": f"{SOURCE}/{version} holds a different bundle"})
        else:
            assert command.action == "activate", command
            assert set(command.parameters) == {"version", "pointer"}, command
            assert sent.rollback, "the undo sends rollback pointers"
            if iid in self.fail_activate:
                return answer(1, {"status": "failed", "command": "activate", "error": f"no bundle {version}"})
        assert (sent.model, sent.version) == (MODEL, version)
        return answer(0, self.hosts.switch(iid, version))


def answer(code: int, report: dict[str, Any]) -> CommandResult:
    return CommandResult(code, "fetching and checking the bundle\n" + json.dumps(report) + "\n",
                         "" if code == 0 else "serving: failed")


class Verifications(logging.Handler):
    """Records rollout's "instance X: ..." line, logged after each server of a batch is verified (or skipped)."""

    PATTERN = re.compile(r"instance (\S+): (serves version|no server running)")

    def __init__(self, events: list[tuple[str, ...]]) -> None:
        super().__init__(logging.INFO)
        self.events = events
        self.logger = logging.getLogger("include.release.rollout")

    def emit(self, record: logging.LogRecord) -> None:
        found = self.PATTERN.match(record.getMessage())
        if found:
            self.events.append(("verified", found.group(1)))

    def __enter__(self) -> Verifications:
        self.level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def fleet_of(count: int, url: str = "") -> list[Instance]:
    return [Instance(f"i-{n}", f"{url}/i-{n}" if url else "") for n in range(1, count + 1)]


def deploy(store: BundleStore, fleet: Fleet, runner: CommandRunner, bundle: Path, batch_size: int = 1,
           verify_timeout: float = 5.0, rollback: bool = False, version: str = "2") -> DeploymentResult:
    return rollout(store, fleet, runner, target="ec2", model_name=MODEL, version=version, bundle=bundle,
                   batch_size=batch_size, verify_timeout=verify_timeout,
                   pointers=PointerSigner(LocalSigner(signing_config().private_key), trusted_keys(), MODEL),
                   rollback=rollback)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "release" / "2"  # only its manifest is read (for the digest); the fake store records it
    bundle.mkdir(parents=True)
    (bundle / "MANIFEST.sha256").write_text(MANIFEST)
    return bundle


# --- a rollout that succeeds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size, batches", [
    (1, [["i-1"], ["i-2"], ["i-3"], ["i-4"], ["i-5"]]),
    (2, [["i-1", "i-2"], ["i-3", "i-4"], ["i-5"]]),
    (3, [["i-1", "i-2", "i-3"], ["i-4", "i-5"]]),
])
def test_batches_are_refreshed_then_verified_in_fleet_order(batch_size: int, batches: list[list[str]],
                                                           bundle: Path) -> None:
    servers = fleet_of(5)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    store, runner = FakeStore(events=hosts.events), FakeRunner(hosts)
    with Verifications(hosts.events):
        result = deploy(store, FakeFleet(servers), runner, bundle, batch_size=batch_size)

    expected: list[tuple[str, str]] = []
    for batch in batches:  # a whole batch is switched before any of it is verified, then the next batch
        expected += [("refresh", iid) for iid in batch] + [("verified", iid) for iid in batch]
    assert hosts.events == [*expected, ("pointer", "2")]  # the pointer moves once every server is verified
    assert runner.calls == [(s.instance_id, REFRESH, REFRESH_COMMENT) for s in servers]
    # Published before any server is asked; the pointer names the new version only at the end.
    assert store.calls == [("read_pointer",), ("publish", str(bundle), "2"), ("write_pointer", "2")]
    assert result.manifest_sha256 == MANIFEST_SHA256
    assert store.pointer == "2" and hosts.current == {s.instance_id: "2" for s in servers}
    assert (result.target, result.model_name, result.version, result.source, result.previous_pointer) == \
        ("ec2", MODEL, "2", SOURCE, "1")
    assert result.instances == [{"instance_id": s.instance_id, "url": "", "changed": True, "previous": "1"}
                                for s in servers]
    assert result.seconds >= 0
    assert result.summary().startswith("toy version 2 is in the store via ec2, but no server answered")


def test_an_instance_already_on_the_version_is_left_alone_and_reported_unchanged(bundle: Path) -> None:
    servers = fleet_of(3)
    hosts = Hosts(current={"i-1": "1", "i-2": "2", "i-3": None})
    result = deploy(FakeStore(pointer=None), FakeFleet(servers), FakeRunner(hosts), bundle)
    assert [(i["instance_id"], i["changed"], i["previous"]) for i in result.instances] == \
        [("i-1", True, "1"), ("i-2", False, None), ("i-3", True, None)]
    assert result.previous_pointer is None


# --- a refresh that fails -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("failing", [1, 3, 5])
def test_refresh_failure_on_instance_k_rolls_back_the_earlier_ones_last_first(failing: int, batch_size: int,
                                                                             bundle: Path) -> None:
    servers = fleet_of(5)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    store, runner = FakeStore(), FakeRunner(hosts, fail_refresh={f"i-{failing}"})
    with pytest.raises(DeploymentError) as failed:
        deploy(store, FakeFleet(servers), runner, bundle, batch_size=batch_size)

    before = [f"i-{n}" for n in range(1, failing)]  # switched before the failure
    refreshed = [(iid, REFRESH, REFRESH_COMMENT) for iid in [*before, f"i-{failing}"]]
    undone = [(iid, ROLL_BACK_TO_1, "roll back to version 1") for iid in reversed(before)]
    assert runner.calls == refreshed + undone  # nothing after the failing instance was touched
    notes = "; ".join(f"{iid} rolled back to version 1" for iid in reversed(before)) or "no server had switched yet"
    assert str(failed.value) == (f"instance i-{failing}: the refresh command failed (exit 1): "
                                 f"{SOURCE}/2 holds a different bundle; {notes}")
    # The pointer never moved: new servers keep booting the version they booted before the deploy.
    assert store.calls == [("read_pointer",), ("publish", str(bundle), "2")]
    assert store.pointer == "1" and set(hosts.current.values()) == {"1"}


def test_without_an_earlier_pointer_none_is_written(bundle: Path) -> None:
    servers = fleet_of(3)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    store, runner = FakeStore(pointer=None), FakeRunner(hosts, fail_refresh={"i-2"})
    with pytest.raises(DeploymentError, match="i-1 rolled back to version 1$"):
        deploy(store, FakeFleet(servers), runner, bundle)
    assert store.calls == [("read_pointer",), ("publish", str(bundle), "2")]
    assert store.pointer is None


def test_an_instance_with_no_earlier_version_keeps_the_new_one(bundle: Path) -> None:
    servers = fleet_of(4)
    hosts = Hosts(current={"i-1": "1", "i-2": None, "i-3": "1", "i-4": "1"})  # i-2: a fresh server
    store, runner = FakeStore(), FakeRunner(hosts, fail_refresh={"i-4"})
    with pytest.raises(DeploymentError) as failed:
        deploy(store, FakeFleet(servers), runner, bundle, batch_size=2)
    assert str(failed.value).endswith("; i-3 rolled back to version 1; i-2 had no earlier version and keeps the new "
                                      "one; i-1 rolled back to version 1")
    assert runner.calls == [
        *[(iid, REFRESH, REFRESH_COMMENT) for iid in ("i-1", "i-2", "i-3", "i-4")],
        ("i-3", ROLL_BACK_TO_1, "roll back to version 1"),
        ("i-1", ROLL_BACK_TO_1, "roll back to version 1"),  # nothing is sent to i-2
    ]
    assert hosts.current == {"i-1": "1", "i-2": "2", "i-3": "1", "i-4": "1"}
    assert store.pointer == "1"


def test_an_instance_that_was_already_on_the_version_is_not_rolled_back(bundle: Path) -> None:
    servers = fleet_of(3)
    hosts = Hosts(current={"i-1": "2", "i-2": "1", "i-3": "1"})
    runner = FakeRunner(hosts, fail_refresh={"i-3"})
    with pytest.raises(DeploymentError) as failed:
        deploy(FakeStore(), FakeFleet(servers), runner, bundle)
    assert str(failed.value).endswith("; i-2 rolled back to version 1")
    assert [(iid, comment) for iid, _, comment in runner.calls] == [
        ("i-1", REFRESH_COMMENT), ("i-2", REFRESH_COMMENT), ("i-3", REFRESH_COMMENT),
        ("i-2", "roll back to version 1")]
    assert hosts.current == {"i-1": "2", "i-2": "1", "i-3": "1"}


def test_a_rollback_command_that_fails_is_reported_and_the_others_still_roll_back(bundle: Path) -> None:
    servers = fleet_of(4)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    store, runner = FakeStore(), FakeRunner(hosts, fail_refresh={"i-4"}, fail_activate={"i-2"})
    with pytest.raises(DeploymentError) as failed:
        deploy(store, FakeFleet(servers), runner, bundle)
    message = str(failed.value)
    assert message.startswith("instance i-4: the refresh command failed (exit 1): ")
    notes = message.split(" bundle; ", 1)[1].split("; ")
    assert notes[0] == "i-3 rolled back to version 1"
    assert notes[1].startswith("i-2 ROLLBACK FAILED (exit 1): ") and '"error": "no bundle 1"' in notes[1]
    assert notes[2] == "i-1 rolled back to version 1"
    assert [(iid, commands) for iid, commands, _ in runner.calls][4:] == [
        (iid, ROLL_BACK_TO_1) for iid in ("i-3", "i-2", "i-1")]
    assert hosts.current == {"i-1": "1", "i-2": "2", "i-3": "1", "i-4": "1"}  # i-2 is still on the new one
    assert store.pointer == "1"


# --- nothing to deploy to, and an unexpected error -------------------------------------------------------------


def test_no_instances_is_an_error_and_nothing_is_published(bundle: Path) -> None:
    store, runner = FakeStore(), FakeRunner(Hosts(current={}))
    with pytest.raises(DeploymentError, match=r"^no servers to deploy to \(ec2\): nothing was changed$"):
        deploy(store, FakeFleet([]), runner, bundle)
    assert store.calls == [] and runner.calls == []


def test_an_unexpected_exception_becomes_a_deployment_error_with_the_rollback_notes(bundle: Path) -> None:
    servers = fleet_of(3)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    boom = ConnectionError("the SSM endpoint is unreachable")
    store, runner = FakeStore(), FakeRunner(hosts, raise_on={"i-3": boom})
    with pytest.raises(DeploymentError) as failed:
        deploy(store, FakeFleet(servers), runner, bundle, batch_size=2)
    assert str(failed.value) == ("deploy stopped by ConnectionError: the SSM endpoint is unreachable; "
                                 "i-2 rolled back to version 1; i-1 rolled back to version 1")
    assert failed.value.__cause__ is boom
    assert [(iid, comment) for iid, _, comment in runner.calls] == [
        ("i-1", REFRESH_COMMENT), ("i-2", REFRESH_COMMENT), ("i-3", REFRESH_COMMENT),
        ("i-2", "roll back to version 1"), ("i-1", "roll back to version 1")]
    assert store.calls == [("read_pointer",), ("publish", str(bundle), "2")]  # the pointer never moved


# --- verification against servers (an HTTP server in a thread) ----------------------------------------------------


@pytest.fixture
def http_fleet(request: pytest.FixtureRequest) -> Iterator[tuple[str, Hosts]]:
    """One in-process HTTP server answering /<instance id>/version and /ready from `hosts.served`."""
    hosts = Hosts(current={f"i-{n}": "1" for n in range(1, 4)})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            _, iid, endpoint = self.path.split("/")
            hosts.events.append(("verified", iid, endpoint))
            version = hosts.served[iid]
            body = {"version": version, "refused": None} if endpoint == "version" else \
                {"status": "ready", "version": version}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hosts
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def collapsed(events: list[tuple[str, ...]]) -> list[tuple[str, str]]:
    """(what, instance) with repeats in a row merged: the many /version and /ready calls of one verification."""
    out: list[tuple[str, str]] = []
    for what, iid, *_ in events:
        if not out or out[-1] != (what, iid):
            out.append((what, iid))
    return out


def test_each_server_is_verified_after_its_batch_is_switched(http_fleet: tuple[str, Hosts], bundle: Path) -> None:
    url, hosts = http_fleet
    servers = fleet_of(3, url)
    runner = FakeRunner(hosts)
    result = deploy(FakeStore(), FakeFleet(servers), runner, bundle, batch_size=2)
    assert collapsed(hosts.events) == [("refresh", "i-1"), ("refresh", "i-2"), ("verified", "i-1"),
                                       ("verified", "i-2"), ("refresh", "i-3"), ("verified", "i-3")]
    # Five consecutive answers showing version 2, each with /ready, per server.
    for iid in ("i-1", "i-2", "i-3"):
        asked = [endpoint for _, who, *endpoint in hosts.events if who == iid and endpoint]
        assert asked == [["version"], ["ready"]] * 5, (iid, asked)
    assert [i["url"] for i in result.instances] == [f"{url}/i-{n}" for n in (1, 2, 3)]
    assert result.summary().startswith("toy version 2 live on 3 server(s) via ec2 (3 switched, 0 already on it)")


def test_a_server_that_keeps_the_old_version_fails_verification_and_everything_rolls_back(
        http_fleet: tuple[str, Hosts], bundle: Path) -> None:
    url, hosts = http_fleet
    hosts.stuck.add("i-2")  # its store switches, its server keeps answering version 1
    servers = fleet_of(3, url)
    store, runner = FakeStore(), FakeRunner(hosts)
    with pytest.raises(DeploymentError) as failed:
        deploy(store, FakeFleet(servers), runner, bundle, verify_timeout=1.0)
    assert str(failed.value) == (f"instance i-2: the server at {url}/i-2 did not switch to version 2 with no "
                                 "candidate within 1s (still serving version 1 with no candidate); i-2 rolled back "
                                 "to version 1; i-1 rolled back to version 1")
    assert [(iid, commands) for iid, commands, _ in runner.calls] == [
        ("i-1", REFRESH), ("i-2", REFRESH), ("i-2", ROLL_BACK_TO_1), ("i-1", ROLL_BACK_TO_1)]
    assert collapsed(hosts.events)[:4] == [("refresh", "i-1"), ("verified", "i-1"), ("refresh", "i-2"),
                                           ("verified", "i-2")]
    assert store.calls == [("read_pointer",), ("publish", str(bundle), "2")] and store.pointer == "1"
    assert hosts.current == {"i-1": "1", "i-2": "1", "i-3": "1"} and hosts.served["i-1"] == "1"


# --- values the mlops-serving document refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2; touch /tmp/pwned", "$(id)", "-2", "2\n"])
def test_a_version_the_document_refuses_stops_the_deploy_before_anything_is_published(
        version: str, bundle: Path) -> None:
    servers = fleet_of(2)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    store, runner = FakeStore(), FakeRunner(hosts)
    # Refused by the pointer's own version check or by the document's pattern, whichever comes first: either way
    # before anything is published or sent.
    with pytest.raises(DeploymentError, match="invalid version name|mlops-serving parameter version=.* does not match"):
        deploy(store, FakeFleet(servers), runner, bundle, version=version)
    assert store.calls == [("read_pointer",)] and runner.calls == [] and hosts.events == []


def test_a_previous_pointer_from_a_tampered_store_is_never_sent_back(bundle: Path, tmp_path: Path) -> None:
    """A server whose store was tampered with reports a hostile earlier pointer (shell syntax for a version, signed
    by a key nobody trusts): no rollback command is built from it; the others are still rolled back, and the
    failure says so."""
    servers = fleet_of(3)
    hostile = signed_statement(attacker_key(tmp_path), model=MODEL, version="1; touch /tmp/pwned")
    hosts = Hosts(current={"i-1": "1", "i-2": "1", "i-3": "1"}, forged={"i-2": pointers.encode_token(hostile)})
    store, runner = FakeStore(), FakeRunner(hosts, fail_refresh={"i-3"})
    with pytest.raises(DeploymentError) as failed:
        deploy(store, FakeFleet(servers), runner, bundle)
    assert "i-2 keeps the new version: its earlier pointer cannot be used" in str(failed.value)
    assert "i-1 rolled back to version 1" in str(failed.value)
    assert [(iid, command.action) for iid, command, _ in runner.calls] == [
        ("i-1", "refresh"), ("i-2", "refresh"), ("i-3", "refresh"), ("i-1", "activate")]


# --- the signed pointers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rollback", [False, True])
def test_every_server_and_the_store_get_one_pointer_above_the_stores_and_a_rollback_says_so(
        rollback: bool, bundle: Path) -> None:
    servers = fleet_of(3)
    hosts = Hosts(current={s.instance_id: "1" for s in servers})
    store, runner = FakeStore(), FakeRunner(hosts)
    earlier = pointers.verify(store.read_pointer() or b"", trusted_keys())
    deploy(store, FakeFleet(servers), runner, bundle, rollback=rollback)
    assert len({p.envelope for p in runner.sent}) == 1  # one pointer for the whole fleet ...
    sent = runner.sent[0]
    assert store.written == sent  # ... and for servers started later
    assert (sent.model, sent.version, sent.bundle_sha256, sent.rollback) == (MODEL, "2", MANIFEST_SHA256, rollback)
    assert sent.sequence > earlier.sequence


def test_the_undo_signs_rollback_pointers_above_the_deploys_to_each_servers_earlier_version(bundle: Path) -> None:
    servers = fleet_of(3)
    hosts = Hosts(current={"i-1": "1", "i-2": "0", "i-3": "1"})
    store, runner = FakeStore(), FakeRunner(hosts, fail_refresh={"i-3"})
    with pytest.raises(DeploymentError, match="i-2 rolled back to version 0; i-1 rolled back to version 1$"):
        deploy(store, FakeFleet(servers), runner, bundle)
    deployed, *undo = runner.sent[2:]  # the pointer sent to i-3, then the undo's, last switched first
    assert [(p.version, p.rollback) for p in undo] == [("0", True), ("1", True)]
    assert all(p.sequence > deployed.sequence for p in undo) and undo[1].sequence > undo[0].sequence
    assert hosts.current == {"i-1": "1", "i-2": "0", "i-3": "1"} and store.pointer == "1"
