"""Registered MLflow model version -> a bundle in a model store (the format of serving/store.py).

Runs on the pipeline side, where MLflow is installed; a serving host only ever receives finished bundles.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from include.ml.components import card
from include.ml.config_file import SigningConfig
from include.ml.exceptions import DeploymentError
from include.release.onnx.bundle import write_model_onnx
from include.release.provenance import predicate, sign_or_reuse
from include.release.signing import PointerSigner, Signer, sign_bundle, signer_for, trusted_keys
from serving import store
from serving.activation import ActivationError
from serving.activation import activate as activate_bundle
from serving.model import ModelLoadError, load_bundle
from serving.pointer import Pointer, read_applied
from serving.signing import PublicKeys, verify_signature
from serving.trust import UntrustedModelError, check_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    model_name: str
    version: str
    bundle: str
    manifest_sha256: str
    activated: bool

    def summary(self) -> str:
        where = f"{self.bundle}, the store's CURRENT version" if self.activated else self.bundle
        return f"{self.model_name} version {self.version} exported, checked and signed to {where}"

    def xcom(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "version": self.version, "bundle": self.bundle,
                "manifest_sha256": self.manifest_sha256, "activated": self.activated}


def export_to_store(model_name: str, version_or_alias: str, store_dir: Path, signing: SigningConfig,
                    activate: bool = False) -> ExportResult:
    """`export_bundle`, then (with `activate`) a signed pointer to it and the same checks and pointer move as
    `python -m serving activate --pointer`."""
    trusted, signer = trusted_keys(signing), signer_for(signing)
    try:
        bundle = export_bundle(model_name, version_or_alias, store_dir, signer, trusted)
        if activate:
            with store.locked(store_dir):
                activate_bundle(store_dir, store_pointer(store_dir, signer, trusted, model_name, bundle).envelope,
                                trusted, model_name=model_name)
    except (store.BundleError, ActivationError, ModelLoadError) as exc:
        raise DeploymentError(f"cannot export {model_name} {version_or_alias}: {exc}") from exc
    return ExportResult(model_name, bundle.name, str(bundle), store.sha256_file(bundle / store.MANIFEST), activate)


def store_pointer(store_dir: Path, signer: Signer, trusted: PublicKeys, model_name: str,
                  bundle: Path) -> Pointer:
    """A signed pointer to `bundle`, with a sequence above the store's CURRENT and its record of the last applied."""
    pointers = PointerSigner(signer, trusted, model_name)
    pointers.after(store.read_pointer(store_dir))
    applied = read_applied(store_dir)
    pointers.last = max(pointers.last, applied.sequence if applied else 0)
    return pointers.sign(bundle.name, store.sha256_file(bundle / store.MANIFEST))


def export_bundle(model_name: str, version_or_alias: str, store_dir: Path, signer: Signer,
                  trusted: PublicKeys) -> Path:
    """Copy a registered version (number or alias) into `store_dir` as a signed bundle <version>/.

    The model is checked against the servers' allow-list before anything is signed, converted to ONNX
    (model.onnx, kept only if it answers as the model on the rows every server checks; bundle.json's "onnx" says
    whether it was, and why not), and the signed bundle is loaded with the servers' own loader (signature,
    checksums, agreement, self-check) before it is installed. A version already in the store is kept once its
    signature verifies. MLflow must already point at the registry (include.ml.tracking.configure). Raises
    store.BundleError or serving.model.ModelLoadError.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file floods task logs
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        mv = client.get_model_version(model_name, version_or_alias) if version_or_alias.isdigit() \
            else client.get_model_version_by_alias(model_name, version_or_alias)
    except MlflowException as exc:
        raise store.BundleError(f"model {model_name!r} has no version or alias {version_or_alias!r}") from exc
    version = str(mv.version)
    if (store_dir / version).exists():
        verify_signature(store_dir / version, trusted)
        kept = store.verify_manifest(store_dir / version)
        if (kept.model, kept.version) != (model_name, version):
            raise store.BundleError(f"{store_dir / version} holds {kept.model!r} version {kept.version!r}, not "
                                    f"{model_name!r} version {version!r}: refused")
        return store_dir / version
    run = client.get_run(mv.run_id)
    staged = store.staging_dir(store_dir)
    try:
        model_dir = staged / store.MODEL_DIR
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=str(model_dir))
        try:
            check_model(store.read_files(model_dir), yaml.safe_load((model_dir / "MLmodel").read_text()))
        except (UntrustedModelError, store.BundleError, OSError, yaml.YAMLError) as exc:
            # a registry writer must not reach servers
            raise store.BundleError(f"{model_name} version {version} is refused: {exc}") from exc
        metadata = {"name": model_name, "version": version, "run_id": mv.run_id,
                    "trained_at": _iso(run.info.start_time), "registered_at": _iso(mv.creation_timestamp),
                    "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
                    "onnx": write_model_onnx(staged)}  # model.onnx before the manifest: signed like the model
        (staged / store.METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        _copy_card(client, mv.run_id, staged)
        # Last before the manifest: the statement names every file above, the manifest then covers it too.
        sign_or_reuse(staged, predicate(model_name, version, run, metadata["registered_at"]), signer, trusted,
                      client, mv.run_id, version)
        store.write_manifest(staged, model_name, version)  # the card too: signed like the model
        sign_bundle(staged, signer)
        load_bundle(staged, trusted)  # exactly what every server will do with it
        target = store.install(staged, store_dir, version)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("exported %s version %s to %s (signed)", model_name, version, target)
    return target


def _copy_card(client: Any, run_id: str, bundle: Path) -> None:
    """The version's model card (evaluate logged it to the run) into the bundle; a run without one, evaluated
    before cards existed, gives a bundle without one."""
    import mlflow

    logged = {Path(a.path).name for a in client.list_artifacts(run_id, card.ARTIFACT_DIR)}
    for name, target in ((card.HTML, store.CARD_HTML), (card.MARKDOWN, store.CARD_MARKDOWN)):
        if name in logged:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{card.ARTIFACT_DIR}/{name}",
                                                       dst_path=str(bundle / ".card"))
            os.replace(path, bundle / target)
            os.chmod(bundle / target, 0o644)  # the stage wrote it owner-only; a server may run as another user
    shutil.rmtree(bundle / ".card", ignore_errors=True)


def _iso(millis: int | None) -> str | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(
        timespec="seconds")
