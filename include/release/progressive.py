"""Progressive delivery: a registered version beside the champion on every server, as a shadow or a canary, then
promoted or aborted. What `python main.py release ...` and the ml_release DAG call.

Each step is one signed pointer (serving/pointer.py) rolled out to the configured target exactly as a deploy is
(include/release/rollout.py: batches, verification, undo):

- `start` (shadow or canary): the pointer names the champion the store's pointer names, and the version as its
  `candidate` with the mode and share; every server fetches the candidate's bundle (exported and published first)
  and must then show both on /version. The registry's `candidate` alias moves to the version.
- `promote`: the pointer names the candidate as the champion, with no candidate; the registry's champion alias
  moves to it (reason "release promote") and the candidate alias goes.
- `abort`: the pointer names the champion alone. It moves the store's pointer first and tries every server even if
  one fails (a retreat: include.release.rollout.move_fleet), and it never needs the candidate's bundle, so it works
  when that bundle is gone or broken. The candidate alias goes and the version is tagged release.aborted=<reason>.
- `status`: the store's verified pointer and what every server's /version says.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from include.ml import registry, tracking
from include.ml.entities import PipelineConfig
from include.ml.exceptions import DeploymentError
from include.release.deploy import connect
from include.release.export import export_bundle
from include.release.ports import BundleStore, CommandRunner, DeploymentResult, Fleet
from include.release.rollout import Move, move_fleet
from include.release.signing import PointerSigner, signer_for, trusted_keys
from serving.model import ModelLoadError
from serving.pointer import Candidate, Pointer
from serving.store import MANIFEST, BundleError, sha256_file

log = logging.getLogger(__name__)
MODES = ("shadow", "canary")
EXPORTS = "progressive"  # bundles exported for releases, under artifacts_root/<this>/<model>
ABORTED_TAG = registry.ABORTED_TAG


class ReleaseError(DeploymentError):
    """A release step cannot run: no champion deployed, no release to promote, another release running, a bad
    mode or share. Nothing was changed."""


@dataclass(frozen=True)
class ReleaseState:
    """What one release step left: the champion and candidate every server now serves, and how it got there."""

    model_name: str
    target: str
    action: str  # shadow | canary | promote | abort
    version: str | None  # what the step is about: the candidate released, promoted or aborted (None: none known)
    champion: str  # what every server now answers with (all of the traffic but a canary's share)
    candidate: str | None  # what every server now runs beside it (None after promote and abort)
    mode: str | None
    share: float | None
    before: dict[str, Any] | None  # the store's pointer before the step (Pointer.describe())
    servers: list[dict[str, Any]] = field(default_factory=list)  # instance_id, url, changed, previous
    seconds: float = 0.0
    reason: str = ""

    def summary(self) -> str:
        served = f"{len(self.servers)} server(s) via {self.target} in {self.seconds:.1f}s"
        if self.action in MODES:
            return (f"{self.model_name}: version {self.candidate} is a {self.mode} at {self.share:.0%} beside "
                    f"champion {self.champion} on {served}")
        if self.action == "promote":
            return f"{self.model_name}: version {self.champion} promoted to champion, 100% of traffic, on {served}"
        what = f"release of version {self.version} aborted" if self.version else "no release was running"
        return f"{self.model_name}: {what} ({self.reason}); champion {self.champion} answers 100% on {served}"

    def xcom(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServerStatus:
    instance_id: str
    url: str  # "" when no server runs (the local target with nothing answering)
    version: str | None = None  # the champion its /version shows
    candidate: dict[str, Any] | None = None  # {"version", "mode", "share"} or None
    error: str = ""


@dataclass(frozen=True)
class ReleaseStatus:
    """The store's verified pointer (what every server is meant to serve) and what each server says it serves."""

    model_name: str
    target: str
    champion: str | None
    candidate: dict[str, Any] | None  # {"version", "bundle_sha256", "mode", "share"} or None
    sequence: int | None
    issued_at: str | None
    instances: list[ServerStatus]

    @property
    def urls(self) -> list[str]:
        """The servers to read /metrics from (the release gate)."""
        return [i.url for i in self.instances if i.url]

    def expected(self) -> tuple[str | None, dict[str, Any] | None]:
        c = self.candidate
        return self.champion, None if c is None else {k: c[k] for k in ("version", "mode", "share")}

    def drifted(self) -> list[str]:
        """The instances not serving what the store's pointer names (or not answering)."""
        return [i.instance_id for i in self.instances if i.url and (i.error or (i.version, i.candidate)
                                                                    != self.expected())]

    def summary(self) -> str:
        if self.champion is None:
            return f"{self.model_name}: no champion deployed via {self.target}"
        c = self.candidate
        release = f"candidate {c['version']} as a {c['mode']} at {c['share']:.0%}" if c else "no release"
        off = self.drifted()
        return (f"{self.model_name} via {self.target}: champion {self.champion}, {release}; "
                f"{len(self.urls)} server(s) answering" + (f", NOT as the store names: {off}" if off else ""))

    def xcom(self) -> dict[str, Any]:
        return {**asdict(self), "urls": self.urls, "drifted": self.drifted()}


@dataclass
class _Release:
    """The configured target and the signer of one release step, and the store's verified pointer before it."""

    config: PipelineConfig
    store: BundleStore
    fleet: Fleet
    runner: CommandRunner
    pointers: PointerSigner
    current: Pointer | None

    @property
    def name(self) -> str:
        return self.config.mlflow.registered_model_name

    def champion(self) -> Pointer:
        if self.current is None:
            raise ReleaseError(f"no champion of {self.name} is deployed via {self.config.deployment.target} (the "
                               f"store {self.store.source} has no signed pointer): deploy one first (python "
                               f"main.py --stage deploy, or ml_pipeline); nothing was changed")
        return self.current

    def move(self, move: Move, retreat: bool = False) -> DeploymentResult:
        dep = self.config.deployment
        return move_fleet(self.store, self.fleet, self.runner, move, target=dep.target, model_name=self.name,
                          batch_size=dep.batch_size, verify_timeout=dep.verify_timeout_seconds,
                          pointers=self.pointers, retreat=retreat)

    def state(self, action: str, version: str | None, move: Move, result: DeploymentResult,
              reason: str = "") -> ReleaseState:
        c = move.candidate
        return ReleaseState(self.name, result.target, action, version, move.version, c.version if c else None,
                            c.mode if c else None, c.share if c else None,
                            self.current.describe() if self.current else None, result.instances, result.seconds,
                            reason)


def _open(config: PipelineConfig, runner: CommandRunner | None) -> _Release:
    tracking.configure(config.mlflow)
    store, fleet, runner = connect(config, runner)
    pointers = PointerSigner(signer_for(config.signing), trusted_keys(config.signing),
                             config.mlflow.registered_model_name)
    return _Release(config, store, fleet, runner, pointers, pointers.after(store.read_pointer()))


def start(config: PipelineConfig, version: str, mode: str, share: float,
          runner: CommandRunner | None = None) -> ReleaseState:
    """Put `version` beside the champion on every server as a `mode` ("shadow": scores `share` of the requests off
    the request path; "canary": answers `share` of them). Moving a running release of the same version to another
    mode or share is the same call. `runner` replaces how commands reach the servers (tests)."""
    _check_step(mode, share)
    release = _open(config, runner)
    champion = release.champion()
    running = champion.candidate
    if version == champion.version:
        raise ReleaseError(f"version {version} is the champion already: nothing to release")
    if running is not None and running.version != version:
        raise ReleaseError(f"version {running.version} is already released as a {running.mode}: promote or abort "
                           f"it first (python main.py release promote|abort); nothing was changed")
    bundle, manifest_sha256 = _export(release, version)
    move = Move(champion.version, champion.bundle_sha256, Candidate(version, manifest_sha256, mode, float(share)),
                bundle=bundle)
    state = release.state(mode, version, move, release.move(move))
    registry.set_candidate(release.name, version)
    log.info("release: %s", state.summary())
    return state


def promote(config: PipelineConfig, runner: CommandRunner | None = None) -> ReleaseState:
    """Make the running release's candidate the champion on every server (100% of traffic) and in the registry."""
    release = _open(config, runner)
    champion = release.champion()
    candidate = champion.candidate
    if candidate is None:
        raise ReleaseError(f"no release of {release.name} is running (the store's pointer names champion "
                           f"{champion.version} alone): start one with python main.py release shadow|canary")
    move = Move(candidate.version, candidate.bundle_sha256)  # its bundle is on every server already
    state = release.state("promote", candidate.version, move, release.move(move))
    registry.promote(release.name, candidate.version, reason="release promote")
    registry.clear_candidate(release.name)
    log.info("release: %s", state.summary())
    return state


def abort(config: PipelineConfig, reason: str, runner: CommandRunner | None = None) -> ReleaseState:
    """Send every server back to the champion alone, whatever state the release or the candidate's bundle is in;
    the candidate alias goes and the version is tagged release.aborted=<reason>. Running it again is safe."""
    if not reason.strip():
        raise ReleaseError("an abort needs a reason (it is recorded on the candidate version)")
    release = _open(config, runner)
    champion = release.champion()
    candidate = champion.candidate.version if champion.candidate else registry.candidate_version(release.name)
    move = Move(champion.version, champion.bundle_sha256)
    state = release.state("abort", candidate, move, release.move(move, retreat=True), reason)
    if candidate is not None and candidate != champion.version:
        registry.tag_version(release.name, candidate, ABORTED_TAG, reason)
    registry.clear_candidate(release.name)
    log.info("release: %s", state.summary())
    return state


def status(config: PipelineConfig, timeout: float = 5.0) -> ReleaseStatus:
    """The store's verified pointer and every server's /version (no registry, no command sent)."""
    store, fleet, _ = connect(config)
    name = config.mlflow.registered_model_name
    current = PointerSigner(signer_for(config.signing), trusted_keys(config.signing), name).after(store.read_pointer())
    candidate = current.candidate if current else None
    return ReleaseStatus(name, config.deployment.target, current.version if current else None,
                         None if candidate is None else asdict(candidate), current.sequence if current else None,
                         current.issued_at if current else None,
                         [_server_status(i.instance_id, i.url, timeout) for i in fleet.instances()])


def _check_step(mode: str, share: float) -> None:
    if mode not in MODES:
        raise ReleaseError(f"a release mode is one of {', '.join(MODES)}, not {mode!r}")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ReleaseError(f"a release share is a fraction in (0, 1] (a canary's --percent 10 is 0.1), not {share!r}")


def _export(release: _Release, version: str) -> tuple[Path, str]:
    """The version as a signed bundle (exported once, then reused) and its manifest's sha256."""
    out = release.config.artifacts_root / EXPORTS / release.name
    try:
        bundle = export_bundle(release.name, version, out, release.pointers.signer, release.pointers.trusted)
    except (BundleError, ModelLoadError) as exc:
        raise ReleaseError(f"cannot export {release.name} version {version}: {exc}; nothing was changed") from exc
    return bundle, sha256_file(bundle / MANIFEST)


def _server_status(instance_id: str, url: str, timeout: float) -> ServerStatus:
    if not url:
        return ServerStatus(instance_id, url, error="no server running")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"{url}/version", timeout=timeout) as response:  # noqa: S310 - the fleet's URL
            info = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return ServerStatus(instance_id, url, error=f"{type(exc).__name__}: {exc} after "
                                                    f"{time.monotonic() - started:.1f}s")
    return ServerStatus(instance_id, url, info.get("version"), info.get("candidate"))
