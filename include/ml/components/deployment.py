"""Deploy a champion to the prediction servers: publish the bundle, refresh servers in rolling batches, verify each,
roll back on any failure.

The steps are plain Python against three small interfaces, so the same rollout runs for the `local` target (a
directory and a shell on this machine) and the `ec2` target (S3, EC2 and SSM through the Airflow Amazon provider,
see include/aws.py). Every server runs the same command: `python -m serving refresh`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from include.ml.entities import PipelineConfig
from include.ml.exceptions import DeploymentError

log = logging.getLogger(__name__)
RESULT = "deployment.json"


@dataclass(frozen=True)
class Instance:
    instance_id: str
    url: str  # where the deploy step reaches its prediction server


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str = ""

    def last_json(self) -> dict[str, Any]:
        """`python -m serving` ends its output with one JSON line saying what it did."""
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return {}

    def tail(self, chars: int = 600) -> str:
        text = (self.stdout + "\n" + self.stderr).strip()
        return text[-chars:]


class BundleStore(Protocol):
    """Where servers fetch bundles from: `source` is what `python -m serving refresh --source` takes."""

    source: str

    def publish(self, bundle: Path, version: str) -> None: ...
    def read_pointer(self) -> str | None: ...
    def write_pointer(self, version: str) -> None: ...


class Fleet(Protocol):
    def instances(self) -> list[Instance]: ...


class CommandRunner(Protocol):
    def run(self, instance: Instance, commands: list[str], comment: str) -> CommandResult: ...


@dataclass
class DeploymentResult:
    target: str
    model_name: str
    version: str
    source: str
    previous_pointer: str | None
    instances: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        changed = sum(1 for i in self.instances if i.get("changed"))
        return (f"{self.model_name} version {self.version} live on {len(self.instances)} server(s) via {self.target} "
                f"({changed} switched, {len(self.instances) - changed} already on it) in {self.seconds:.1f}s")


@dataclass(frozen=True)
class Skipped:
    reason: str

    def summary(self) -> str:
        return f"not deployed: {self.reason}"


# --- the local target: a release directory standing in for S3, and a shell on this machine ----------------------

@dataclass
class DirectoryStore:
    """<root>/<version>/ bundles and <root>/CURRENT, like s3://bucket/prefix/model."""

    root: Path

    @property
    def source(self) -> str:
        return str(self.root)

    def publish(self, bundle: Path, version: str) -> None:
        """Like an S3 upload, a new bundle replaces one published earlier under the same version name."""
        from serving.store import MANIFEST

        target = self.root / version
        if target.exists() and (target / MANIFEST).read_bytes() == (bundle / MANIFEST).read_bytes():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staged, old = self.root / f".{version}.partial", self.root / f".{version}.old"
        for leftover in (staged, old):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(bundle, staged)
        if target.exists():
            os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)

    def read_pointer(self) -> str | None:
        from serving import store

        return store.read_pointer(self.root)

    def write_pointer(self, version: str) -> None:
        from serving import store

        store.write_pointer(self.root, version)


@dataclass
class StaticFleet:
    servers: list[Instance]

    def instances(self) -> list[Instance]:
        return list(self.servers)


@dataclass
class ShellRunner:
    """Runs the refresh command on this machine, as SSM runs it on an instance."""

    env: dict[str, str]
    timeout: float = 600.0

    def run(self, instance: Instance, commands: list[str], comment: str) -> CommandResult:
        log.info("%s on %s", comment, instance.instance_id)
        done = subprocess.run(["bash", "-c", "\n".join(commands)], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=self.timeout)
        return CommandResult(done.returncode, done.stdout, done.stderr)


def server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3):
            return True
    except (OSError, ValueError):
        return False


def refresh_commands(source: str, version: str) -> list[str]:
    """The shell lines every server runs: its own settings come from /etc/mlops/serving.env when present."""
    return [
        "set -euo pipefail",
        "set -a; if [ -f /etc/mlops/serving.env ]; then . /etc/mlops/serving.env; fi; set +a",
        'cd "${MLOPS_APP_DIR:-/opt/mlops/app}"',
        f'"${{MLOPS_PYTHON:-/opt/mlops/venv/bin/python}}" -m serving refresh --source {shlex.quote(source)} '
        f"--version {shlex.quote(version)}",
    ]


def activate_commands(version: str) -> list[str]:
    """Put a version already on the server back (it keeps earlier bundles, so no download)."""
    return refresh_commands("", version)[:3] + [
        f'"${{MLOPS_PYTHON:-/opt/mlops/venv/bin/python}}" -m serving activate {shlex.quote(version)}']


def verify_server(instance: Instance, version: str, timeout: float, confirmations: int = 5) -> None:
    """/ready answers 200 and `confirmations` consecutive /version answers show `version`."""
    if not instance.url:
        return  # a local store with no server running: the next server started serves it
    from serving.probe import NotServing, wait_for_version

    try:
        wait_for_version(instance.url, version, timeout, confirmations, interval=0.5)
    except NotServing as exc:
        raise DeploymentError(f"instance {instance.instance_id}: {exc}") from exc


def rollout(store: BundleStore, fleet: Fleet, runner: CommandRunner, *, target: str, model_name: str,
            version: str, bundle: Path, batch_size: int, verify_timeout: float) -> DeploymentResult:
    """Publish, then refresh and verify the fleet batch by batch; on failure undo everything and raise."""
    started = time.perf_counter()
    instances = fleet.instances()
    if not instances:
        raise DeploymentError(f"no servers to deploy to ({target}): nothing was changed")
    previous_pointer = store.read_pointer()
    store.publish(bundle, version)
    store.write_pointer(version)
    result = DeploymentResult(target, model_name, version, store.source, previous_pointer)
    log.info("deploying %s version %s to %d server(s) in batches of %d (previous: %s)", model_name, version,
             len(instances), batch_size, previous_pointer)
    refreshed: list[tuple[Instance, str | None]] = []  # servers switched so far, with the version they had
    try:
        for start in range(0, len(instances), batch_size):
            batch = instances[start:start + batch_size]
            for instance in batch:
                outcome = runner.run(instance, refresh_commands(store.source, version),
                                     f"refresh {model_name} to version {version}")
                report = outcome.last_json()
                if outcome.exit_code != 0:
                    raise DeploymentError(f"instance {instance.instance_id}: the refresh command failed "
                                          f"(exit {outcome.exit_code}): {report.get('error') or outcome.tail()}")
                if report.get("changed"):
                    refreshed.append((instance, report.get("previous")))
                result.instances.append({"instance_id": instance.instance_id, "url": instance.url,
                                         "changed": bool(report.get("changed")), "previous": report.get("previous")})
            for instance in batch:
                verify_server(instance, version, verify_timeout)
                log.info("instance %s: %s (%d/%d)", instance.instance_id,
                         f"serves version {version}" if instance.url else "no server running; its store names "
                         f"version {version}", len(result.instances), len(instances))
    except Exception as exc:
        undone = _undo(store, runner, refreshed, previous_pointer)
        if isinstance(exc, DeploymentError):
            raise DeploymentError(f"{exc}; {undone}") from exc
        raise DeploymentError(f"deploy stopped by {type(exc).__name__}: {exc}; {undone}") from exc
    result.seconds = round(time.perf_counter() - started, 2)
    log.info("deploy: %s", result.summary())
    return result


def _undo(store: BundleStore, runner: CommandRunner, refreshed: Sequence[tuple[Instance, str | None]],
          previous_pointer: str | None) -> str:
    notes = []
    for instance, previous in reversed(refreshed):
        if previous is None:
            notes.append(f"{instance.instance_id} had no earlier version and keeps the new one")
            continue
        outcome = runner.run(instance, activate_commands(previous), f"roll back to version {previous}")
        if outcome.exit_code == 0:
            notes.append(f"{instance.instance_id} rolled back to version {previous}")
        else:
            notes.append(f"{instance.instance_id} ROLLBACK FAILED (exit {outcome.exit_code}): {outcome.tail(200)}")
        log.warning("rollback: %s", notes[-1])
    if previous_pointer is not None:
        store.write_pointer(previous_pointer)
    return "; ".join(notes) if notes else "no server had switched yet"


@dataclass
class VerificationResult:
    version: str
    rows: int
    servers: dict[str, float]  # instance id -> seconds for the prediction request
    not_running: list[str]

    def summary(self) -> str:
        checked = f"{len(self.servers)} server(s) answer {self.rows} example rows exactly as version {self.version}"
        return checked + (f"; no server running for {self.not_running}" if self.not_running else "")


def verify_fleet(deployed: dict[str, Any], releases: Path, output_dir: Path) -> VerificationResult:
    """POST the model's example rows to every deployed server; answers must equal the bundle's own predictions."""
    import math

    from include.ml import artifacts
    from serving.inputs import validate
    from serving.model import load_bundle

    version = deployed["version"]
    model = load_bundle(releases / version)
    rows = model.self_check_rows
    expected = model.predict(validate(rows, model.contract, max_rows=len(rows)).columns).values
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLOPS_SERVING_API_KEY"):
        headers["X-API-Key"] = os.environ["MLOPS_SERVING_API_KEY"]
    result = VerificationResult(version, len(rows), {}, [])
    for server in deployed["instances"]:
        if not server["url"]:
            result.not_running.append(server["instance_id"])
            continue
        started = time.perf_counter()
        request = urllib.request.Request(f"{server['url']}/invocations",
                                         json.dumps({"dataframe_records": rows}).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answered, served = json.loads(response.read())["predictions"], response.headers["X-Model-Version"]
        except (OSError, ValueError, KeyError) as exc:
            raise DeploymentError(f"instance {server['instance_id']} ({server['url']}) failed the prediction "
                                  f"check: {type(exc).__name__}: {exc}") from exc
        same = len(answered) == len(expected) and all(
            math.isclose(a, e, rel_tol=1e-9) if isinstance(e, float) else a == e for a, e in zip(answered, expected))
        if served != version or not same:
            raise DeploymentError(f"instance {server['instance_id']} answered as version {served} with "
                                  f"{answered[:3]}, expected version {version} with {expected[:3]}")
        result.servers[server["instance_id"]] = round(time.perf_counter() - started, 4)
    artifacts.write_json(output_dir / "verification.json", asdict(result))
    log.info("verify: %s", result.summary())
    return result


def deploy(config: PipelineConfig, version: str, output_dir: Path,
           runner: CommandRunner | None = None) -> DeploymentResult:
    """Export `version` from the registry as a bundle and roll it out to `deployment.target`.

    `runner` replaces how commands reach the servers (tests run SSM's commands on local stand-ins).
    """
    import sys

    from include.ml import artifacts, tracking
    from serving import store as serving_store

    dep, name = config.deployment, config.mlflow.registered_model_name
    tracking.configure(config.mlflow)
    try:
        bundle = serving_store.export(name, version, output_dir / "release")
    except serving_store.BundleError as exc:
        raise DeploymentError(f"cannot export {name} version {version}: {exc}") from exc
    bundles: BundleStore
    fleet: Fleet
    if dep.target == "local":
        url = dep.local.server_url if server_answers(dep.local.server_url) else ""
        if not url:
            log.warning("no prediction server answers at %s: the store %s will name version %s, and the next "
                        "server started on it (make up / make serve) serves it", dep.local.server_url,
                        dep.local.model_store, version)
        bundles = DirectoryStore(config.artifacts_root / "releases" / name)
        fleet = StaticFleet([Instance("local", url)])
        runner = runner or ShellRunner({"MLOPS_APP_DIR": str(config.project_root), "MLOPS_PYTHON": sys.executable,
                                        "SERVING_MODEL_STORE": str(dep.local.model_store), "SERVING_URL": url})
    else:
        from include import aws

        bundles, fleet = aws.S3BundleStore(dep.ec2, name), aws.Ec2Fleet(dep.ec2)
        runner = runner or aws.SsmRunner(dep.ec2)
    result = rollout(bundles, fleet, runner, target=dep.target, model_name=name, version=version, bundle=bundle,
                     batch_size=dep.batch_size, verify_timeout=dep.verify_timeout_seconds)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    return result
