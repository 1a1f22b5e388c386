"""Deploy a registered version to `deployment.target`: export its bundle, roll it out, record what happened."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path

from include.ml import artifacts, registry, tracking
from include.ml.entities import PipelineConfig
from include.ml.exceptions import DeploymentError
from include.release.export import export_bundle
from include.release.ports import BundleStore, CommandRunner, DeploymentResult, Fleet, Instance
from include.release.rollout import rollout
from include.release.signing import PointerSigner, signer_for, trusted_keys
from include.release.targets.local import DirectoryStore, ShellRunner, StaticFleet, server_answers
from serving.model import ModelLoadError
from serving.pointer import peek
from serving.store import BundleError

log = logging.getLogger(__name__)
RESULT = "deployment.json"
RELEASE = "release"  # the exported bundles, under the deploy stage's output dir


def deploy(config: PipelineConfig, version: str, output_dir: Path,
           runner: CommandRunner | None = None, rollback: bool = False) -> DeploymentResult:
    """Export `version` from the registry as a signed bundle and roll it out to `deployment.target`, with a
    signed pointer every server writes as its CURRENT (marked a rollback with `rollback`).

    `runner` replaces how commands reach the servers (tests run SSM's commands on local stand-ins).
    """
    dep, name = config.deployment, config.mlflow.registered_model_name
    tracking.configure(config.mlflow)
    signer, trusted = signer_for(config.signing), trusted_keys(config.signing)
    try:
        bundle = export_bundle(name, version, output_dir / RELEASE, signer, trusted)
    except (BundleError, ModelLoadError) as exc:
        raise DeploymentError(f"cannot export {name} version {version}: {exc}") from exc
    bundles, fleet, runner = connect(config, runner)
    before = peek(bundles.read_pointer())
    result = rollout(bundles, fleet, runner, target=dep.target, model_name=name, version=version, bundle=bundle,
                     batch_size=dep.batch_size, verify_timeout=dep.verify_timeout_seconds,
                     pointers=PointerSigner(signer, trusted, name), rollback=rollback)
    if before is not None and before.candidate is not None:
        _end_release(name, before.candidate.version, version)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    return result


def _end_release(name: str, candidate: str, deployed: str) -> None:
    """A deploy during a release ends it: its pointer names no candidate, so the registry's alias goes too."""
    registry.clear_candidate(name)
    if candidate != deployed:
        log.warning("the deploy of version %s ended the release of version %s: it no longer runs beside the "
                    "champion", deployed, candidate)
        registry.tag_version(name, candidate, registry.ABORTED_TAG, f"ended by the deploy of version {deployed}")


def connect(config: PipelineConfig, runner: CommandRunner | None = None) -> tuple[BundleStore, Fleet, CommandRunner]:
    """The configured target's bundle store, fleet and command runner (`runner` replaces the target's own)."""
    dep, name = config.deployment, config.mlflow.registered_model_name
    if dep.target == "local":
        url = dep.local.server_url if server_answers(dep.local.server_url) else ""
        if not url:
            log.warning("no prediction server answers at %s: the store %s will name what this step sets, and the "
                        "next server started on it (make up / main.py serve) serves it", dep.local.server_url,
                        config.model_store)
        local = ShellRunner({"MLOPS_APP_DIR": str(config.project_root), "MLOPS_PYTHON": sys.executable,
                             "SERVING_MODEL_STORE": str(config.model_store), "SERVING_URL": url,
                             "SERVING_PUBLIC_KEY": str(config.signing.public_key), "SERVING_MODEL_NAME": name})
        return DirectoryStore(config.artifacts_root / "releases" / name), StaticFleet([Instance("local", url)]), \
            runner or local
    if dep.target != "ec2":
        raise DeploymentError(f"deployment.target is {dep.target!r}: there are no servers to release to")
    from include.release.targets import ec2

    return ec2.S3BundleStore(dep.ec2, name), ec2.Ec2Fleet(dep.ec2), runner or ec2.SsmRunner(dep.ec2)
