"""A rolling refresh: publish the bundle, refresh and verify the fleet batch by batch, undo everything on failure.

Plain Python against the Protocols of `ports`, so the same rollout runs for the local target (a directory and a
shell on this machine) and the ec2 target (S3, EC2 and SSM). Every server runs the same command,
`python -m serving refresh`, through the mlops-serving SSM document (include/release/command_document.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

from include.ml.exceptions import DeploymentError
from include.release.command_document import check_command
from include.release.ports import BundleStore, CommandRunner, DeploymentResult, Fleet, Instance, ServingCommand
from include.release.signing import PointerSigner
from serving.probe import NotServing, wait_for_version
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


def verify_server(instance: Instance, version: str, timeout: float, confirmations: int = 5) -> None:
    """/ready answers 200 and `confirmations` consecutive /version answers show `version`."""
    if not instance.url:
        return  # a local store with no server running: the next server started serves it
    try:
        wait_for_version(instance.url, version, timeout, confirmations, interval=0.5)
    except NotServing as exc:
        raise DeploymentError(f"instance {instance.instance_id}: {exc}") from exc


def rollout(store: BundleStore, fleet: Fleet, runner: CommandRunner, *, target: str, model_name: str,
            version: str, bundle: Path, batch_size: int, verify_timeout: float, pointers: PointerSigner,
            rollback: bool = False) -> DeploymentResult:
    """Publish, then refresh and verify the fleet batch by batch, and only then move the pointer that servers
    started later follow; on failure undo everything and raise. `pointers` signs the pointer every server writes
    (marked a rollback with `rollback`: main.py --rollback, ml_rollback)."""
    started = time.perf_counter()
    instances = fleet.instances()
    if not instances:
        raise DeploymentError(f"no servers to deploy to ({target}): nothing was changed")
    before = pointers.after(store.read_pointer())
    previous_pointer = before.version if before else None
    manifest_sha256 = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    try:
        signed = pointers.sign(version, manifest_sha256, rollback=rollback)
    except BundleError as exc:
        raise DeploymentError(f"no pointer can name version {version!r}: {exc}; nothing was published") from exc
    refresh = refresh_command(store.source, version, manifest_sha256, pointer=signed.token)
    check_command(refresh)  # a value the document refuses stops the deploy here, before anything is published
    store.publish(bundle, version)
    result = DeploymentResult(target, model_name, version, store.source, previous_pointer, manifest_sha256)
    log.info("deploying %s version %s to %d server(s) in batches of %d (previous: %s)", model_name, version,
             len(instances), batch_size, previous_pointer)
    refreshed: list[tuple[Instance, str | None]] = []  # servers switched so far, with their earlier pointer
    try:
        for start in range(0, len(instances), batch_size):
            batch = instances[start:start + batch_size]
            for instance in batch:
                outcome = runner.run(instance, refresh, f"refresh {model_name} to version {version}")
                report = outcome.last_json()
                if outcome.exit_code != 0:
                    raise DeploymentError(f"instance {instance.instance_id}: the refresh command failed "
                                          f"(exit {outcome.exit_code}): {report.get('error') or outcome.tail()}")
                if report.get("changed"):
                    refreshed.append((instance, report.get("previous_pointer")))
                result.instances.append({"instance_id": instance.instance_id, "url": instance.url,
                                         "changed": bool(report.get("changed")), "previous": report.get("previous")})
            for instance in batch:
                verify_server(instance, version, verify_timeout)
                log.info("instance %s: %s (%d/%d)", instance.instance_id,
                         f"serves version {version}" if instance.url else "no server running; its store names "
                         f"version {version}", len(result.instances), len(instances))
        store.write_pointer(signed.envelope)  # every server verified: now new servers may start on it
    except Exception as exc:
        undone = _undo(runner, refreshed, pointers)
        if isinstance(exc, DeploymentError):
            raise DeploymentError(f"{exc}; {undone}") from exc
        raise DeploymentError(f"deploy stopped by {type(exc).__name__}: {exc}; {undone}") from exc
    result.seconds = round(time.perf_counter() - started, 2)
    log.info("deploy: %s", result.summary())
    return result


def _undo(runner: CommandRunner, refreshed: Sequence[tuple[Instance, str | None]], pointers: PointerSigner) -> str:
    """Switch the servers moved so far back, last first (the pointer has not moved yet): each gets a new signed
    rollback pointer to the version its earlier pointer named."""
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
