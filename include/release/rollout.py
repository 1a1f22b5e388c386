"""A rolling refresh: publish the bundle, refresh and verify the fleet batch by batch, undo everything on failure.

Plain Python against the Protocols of `ports`, so the same rollout runs for the local target (a directory and a
shell on this machine) and the ec2 target (S3, EC2 and SSM). Every server runs the same command,
`python -m serving refresh`, through the mlops-serving SSM document (include/release/command_document.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from include.ml.exceptions import DeploymentError
from include.release.command_document import check_command
from include.release.ports import BundleStore, CommandRunner, DeploymentResult, Fleet, Instance, ServingCommand
from include.release.signing import PointerSigner
from serving.pointer import Candidate, Pointer
from serving.probe import NotServing, wait_for_release
from serving.store import MANIFEST, BundleError

log = logging.getLogger(__name__)


def refresh_command(source: str, version: str, manifest_sha256: str, pointer: str = "") -> ServingCommand:
    """What every server runs: `python -m serving refresh` through the mlops-serving document, its settings from
    /etc/mlops/serving.env. The manifest's digest rides along, so a server refuses any bundle but the one this
    deploy published; the signed pointer (serving/pointer.py) is what the server writes as its CURRENT."""
    return ServingCommand("refresh", {"source": source, "version": version, "manifestSha256": manifest_sha256,
                                      "pointer": pointer})


def activate_command(version: str, pointer: str = "") -> ServingCommand:
    """Put a version already on the server back (it keeps earlier bundles, so no download)."""
    return ServingCommand("activate", {"version": version, "pointer": pointer})


@dataclass(frozen=True)
class Move:
    """Where a rollout takes the fleet: what the signed pointer names (the champion `version` and its manifest's
    sha256, a release `candidate` beside it or None) and, if it is not in the store yet, the `bundle` to publish.
    Every server's refresh fetches the candidate's bundle when there is one (the champion's is already there, it
    serves it), else the champion's."""

    version: str
    bundle_sha256: str
    candidate: Candidate | None = None
    rollback: bool = False
    bundle: Path | None = None

    @property
    def fetch(self) -> tuple[str, str]:
        """The version every server's refresh fetches, and its manifest's sha256."""
        if self.candidate is not None:
            return self.candidate.version, self.candidate.bundle_sha256
        return self.version, self.bundle_sha256

    def expected_candidate(self) -> dict[str, Any] | None:
        """What a server's /version must show as its candidate once it applied the pointer."""
        c = self.candidate
        return None if c is None else {"version": c.version, "mode": c.mode, "share": c.share}

    def describe(self) -> str:
        c = self.candidate
        return f"version {self.version}" + (f" + candidate {c.version} ({c.mode} {c.share:.0%})" if c else "")


def verify_server(instance: Instance, version: str, timeout: float, confirmations: int = 5,
                  candidate: dict[str, Any] | None = None) -> None:
    """/ready answers 200 and `confirmations` consecutive /version answers show `version` with `candidate` (None:
    no release)."""
    if not instance.url:
        return  # a local store with no server running: the next server started serves it
    try:
        wait_for_release(instance.url, version, candidate, timeout, confirmations)
    except NotServing as exc:
        raise DeploymentError(f"instance {instance.instance_id}: {exc}") from exc


def rollout(store: BundleStore, fleet: Fleet, runner: CommandRunner, *, target: str, model_name: str,
            version: str, bundle: Path, batch_size: int, verify_timeout: float, pointers: PointerSigner,
            rollback: bool = False) -> DeploymentResult:
    """Deploy: publish `bundle`, then refresh and verify the fleet batch by batch, and only then move the pointer
    that servers started later follow; on failure undo everything and raise. `pointers` signs the pointer every
    server writes (marked a rollback with `rollback`: main.py --rollback, ml_rollback)."""
    manifest_sha256 = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    return move_fleet(store, fleet, runner, Move(version, manifest_sha256, rollback=rollback, bundle=bundle),
                      target=target, model_name=model_name, batch_size=batch_size, verify_timeout=verify_timeout,
                      pointers=pointers)


def move_fleet(store: BundleStore, fleet: Fleet, runner: CommandRunner, move: Move, *, target: str, model_name: str,
               batch_size: int, verify_timeout: float, pointers: PointerSigner,
               retreat: bool = False) -> DeploymentResult:
    """Sign a pointer for `move`, publish its bundle if any, refresh and verify the fleet batch by batch, and only
    then move the store's pointer; on failure undo everything and raise DeploymentError.

    With `retreat` (a release's abort: back to a state every server already holds) it goes the other way: the
    store's pointer moves first, so servers started from now on boot on it, every server is tried even after one
    fails, nothing is undone, and the failures are raised at the end."""
    started = time.perf_counter()
    instances = fleet.instances()
    if not instances:
        raise DeploymentError(f"no servers to deploy to ({target}): nothing was changed")
    before = pointers.after(store.read_pointer())
    signed = _sign(move, pointers)
    fetch, fetch_sha256 = move.fetch
    refresh = refresh_command(store.source, fetch, fetch_sha256, pointer=signed.token)
    check_command(refresh)  # a value the document refuses stops the deploy here, before anything is published
    if move.bundle is not None:
        store.publish(move.bundle, fetch)
    result = DeploymentResult(target, model_name, fetch, store.source, before.version if before else None,
                              fetch_sha256)
    log.info("moving %s to %s on %d server(s) in batches of %d (previous: %s)", model_name, move.describe(),
             len(instances), batch_size, _described(before))
    step = _Step(runner, refresh, move, f"refresh {model_name} to {move.describe()}", verify_timeout, result)
    if retreat:
        store.write_pointer(signed.envelope)  # first: whatever happens below, new servers boot on it
        _retreat(step, instances)
    else:
        _advance(step, instances, batch_size, pointers)
        store.write_pointer(signed.envelope)  # every server verified: now new servers may start on it
    result.seconds = round(time.perf_counter() - started, 2)
    if move.candidate is None and not retreat:
        log.info("deploy: %s", result.summary())
    else:
        switched = sum(1 for i in result.instances if i["changed"])
        log.info("%s: %s on %d server(s) via %s (%d switched) in %.1fs", model_name, move.describe(),
                 len(result.instances), target, switched, result.seconds)
    return result


def _sign(move: Move, pointers: PointerSigner) -> Pointer:
    try:
        return pointers.sign(move.version, move.bundle_sha256, rollback=move.rollback, candidate=move.candidate)
    except BundleError as exc:
        raise DeploymentError(f"no pointer can name {move.describe()}: {exc}; nothing was published") from exc


def _described(pointer: Pointer | None) -> str | None:
    if pointer is None:
        return None
    c = pointer.candidate
    return pointer.version + (f" + candidate {c.version} ({c.mode} {c.share:.0%})" if c else "")


@dataclass
class _Step:
    """One command every server of a move runs, what it must then serve, and the record of what each did."""

    runner: CommandRunner
    refresh: ServingCommand
    move: Move
    comment: str
    verify_timeout: float
    result: DeploymentResult

    def refresh_one(self, instance: Instance) -> dict[str, Any]:
        """Refresh `instance`; returns its report (`python -m serving refresh`'s JSON line)."""
        outcome = self.runner.run(instance, self.refresh, self.comment)
        report = outcome.last_json()
        if outcome.exit_code != 0:
            raise DeploymentError(f"instance {instance.instance_id}: the refresh command failed "
                                  f"(exit {outcome.exit_code}): {report.get('error') or outcome.tail()}")
        self.result.instances.append({"instance_id": instance.instance_id, "url": instance.url,
                                      "changed": bool(report.get("changed")), "previous": report.get("previous")})
        return report

    def verify_one(self, instance: Instance, total: int) -> None:
        verify_server(instance, self.move.version, self.verify_timeout, candidate=self.move.expected_candidate())
        log.info("instance %s: %s (%d/%d)", instance.instance_id,
                 f"serves {self.move.describe()}" if instance.url else "no server running; its store names "
                 f"{self.move.describe()}", len(self.result.instances), total)


def _advance(step: _Step, instances: list[Instance], batch_size: int, pointers: PointerSigner) -> None:
    """Batch by batch: refresh every server of the batch, then verify them; on any failure undo and raise."""
    refreshed: list[tuple[Instance, str | None]] = []  # servers switched so far, with their earlier pointer
    try:
        for start in range(0, len(instances), batch_size):
            batch = instances[start:start + batch_size]
            for instance in batch:
                report = step.refresh_one(instance)
                if report.get("changed"):
                    refreshed.append((instance, report.get("previous_pointer")))
            for instance in batch:
                step.verify_one(instance, len(instances))
    except Exception as exc:
        undone = _undo(step.runner, refreshed, pointers)
        if isinstance(exc, DeploymentError):
            raise DeploymentError(f"{exc}; {undone}") from exc
        raise DeploymentError(f"deploy stopped by {type(exc).__name__}: {exc}; {undone}") from exc


def _retreat(step: _Step, instances: list[Instance]) -> None:
    """Every server, one by one, whatever the others did; the failures raised together at the end."""
    failed = []
    for instance in instances:
        try:
            step.refresh_one(instance)
            step.verify_one(instance, len(instances))
        except Exception as exc:  # noqa: BLE001 - one server's failure (SSM, a timeout) must not stop the others
            failed.append(str(exc) if isinstance(exc, DeploymentError) else
                          f"instance {instance.instance_id}: {type(exc).__name__}: {exc}")
            log.error("retreat: %s", failed[-1])
    if failed:
        raise DeploymentError(f"{len(failed)} of {len(instances)} server(s) did not move to {step.move.describe()} "
                              f"(the store's pointer names it: servers started from now on boot on it; run it "
                              f"again): " + "; ".join(failed))


def _undo(runner: CommandRunner, refreshed: Sequence[tuple[Instance, str | None]], pointers: PointerSigner) -> str:
    """Switch the servers moved so far back, last first (the pointer has not moved yet): each gets a new signed
    rollback pointer to what its earlier pointer named (its version and release candidate)."""
    notes = []
    for instance, earlier in reversed(refreshed):
        try:
            back = pointers.rollback_to(earlier) if earlier else None
        except (BundleError, DeploymentError) as exc:
            notes.append(f"{instance.instance_id} keeps the new version: its earlier pointer cannot be used ({exc})")
            continue
        if back is None:
            notes.append(f"{instance.instance_id} had no earlier version and keeps the new one")
            continue
        previous = back.version
        try:
            outcome = runner.run(instance, activate_command(previous, pointer=back.token),
                                 f"roll back to version {previous}")
        except DeploymentError as exc:  # say a server reported a `previous` the document refuses
            notes.append(f"{instance.instance_id} ROLLBACK NOT SENT: {exc}")
            log.warning("rollback: %s", notes[-1])
            continue
        if outcome.exit_code == 0:
            notes.append(f"{instance.instance_id} rolled back to version {previous}")
        else:
            notes.append(f"{instance.instance_id} ROLLBACK FAILED (exit {outcome.exit_code}): {outcome.tail(200)}")
        log.warning("rollback: %s", notes[-1])
    return "; ".join(notes) if notes else "no server had switched yet"
