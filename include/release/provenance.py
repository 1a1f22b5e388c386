"""The provenance statement export signs into every bundle (<bundle>/provenance.json, format: serving/provenance.py).

An in-toto Statement v1 whose subjects are the bundle's files (model, model card, bundle.json) with their sha256,
and whose predicate (type serving.provenance.PREDICATE_TYPE) says what the model was made from: the training run
and the registered version, the data snapshot's sha256, the Great Expectations summary, the code commit and the
sha256 of requirements.txt, as the train stage recorded them on the run (include/ml/training_inputs.py). Signed
as a DSSE envelope by the bundle signer; written before the manifest, which then covers it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from include.ml.training_inputs import recorded_tags
from include.release.signing import Signer
from serving import provenance, store
from serving.signing import PublicKeys, key_id

log = logging.getLogger(__name__)
ARTIFACT_DIR = "provenance"  # in the training run's artifacts: version-<N>.json, the statement its export signed

# The predicate's parts taken from the run's provenance.* tags (tag without the prefix -> [section, field]).
FROM_TAGS = {
    "pipeline_run_id": ("training", "pipeline_run_id"),
    "data.source_uri": ("data", "source_uri"), "data.path": ("data", "snapshot"),
    "data.sha256": ("data", "sha256"), "data.bytes": ("data", "bytes"),
    "validation.suite": ("validation", "suite"), "validation.evaluated": ("validation", "evaluated"),
    "validation.passed": ("validation", "passed"), "validation.success": ("validation", "success"),
    "code.commit": ("code", "commit"), "requirements.sha256": ("code", "requirements_sha256"),
}
NOT_RECORDED = None  # a run trained before provenance was recorded: its inputs are stated as null


def predicate(model_name: str, version: str, run: Any, registered_at: str | None) -> dict[str, Any]:
    """What the training run `run` (an MLflow Run) recorded, as the statement's predicate."""
    tags = recorded_tags(run.data.tags)
    found: dict[str, dict[str, Any]] = {"training": {}, "data": {}, "validation": {}, "code": {}}
    for tag, (section, name) in FROM_TAGS.items():
        found[section][name] = typed(tag, tags.get(tag, NOT_RECORDED))
    return {
        "model": {"name": model_name, "version": version, "run_id": run.info.run_id,
                  "registry_uri": f"models:/{model_name}/{version}", "registered_at": registered_at},
        "training": {"mlflow_run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                     **found["training"]},
        "data": found["data"], "validation": found["validation"], "code": found["code"],
    }


def typed(tag: str, value: str | None) -> Any:
    """A tag's text as the statement states it: counts as numbers, success as a boolean."""
    if value is None:
        return None
    if tag in ("data.bytes", "validation.evaluated", "validation.passed") and value.isdigit():
        return int(value)
    if tag == "validation.success" and value in ("true", "false"):
        return value == "true"
    return value


def statement(bundle: Path, claims: Mapping[str, Any]) -> dict[str, Any]:
    """The in-toto Statement about every file now in `bundle` (provenance.json excepted)."""
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.relative_to(bundle).as_posix()
                   not in (provenance.FILE, store.MANIFEST, store.SIGNATURE))
    return {"_type": provenance.STATEMENT_TYPE,
            "subject": [{"name": p.relative_to(bundle).as_posix(),
                         "digest": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}} for p in files],
            "predicateType": provenance.PREDICATE_TYPE, "predicate": dict(claims)}


def write_provenance(bundle: Path, claims: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """Sign the statement about `bundle`'s files into <bundle>/provenance.json (call it last, before the
    manifest is written); returns the statement."""
    stated = statement(bundle, claims)
    payload = json.dumps(stated, sort_keys=True, separators=(",", ":")).encode()  # compact: KMS signs <= 4 KB raw
    signature = signer.sign(provenance.pae(provenance.PAYLOAD_TYPE, payload))
    path = bundle / provenance.FILE
    path.write_bytes(provenance.envelope(payload, signature, key_id(signer.public_key())))
    path.chmod(0o644)
    return stated


def sign_or_reuse(bundle: Path, claims: Mapping[str, Any], signer: Signer, trusted: PublicKeys, client: Any,
                  run_id: str, version: str) -> None:
    """Write <bundle>/provenance.json: the statement an earlier export of this version logged to its training run,
    when it still says exactly this (same files, same claims) under a trusted signature, else a newly signed one,
    logged for the next export. ECDSA signatures differ at every signing, and the manifest covers the statement: a
    re-export (a redeploy, a rollback) must give the same manifest, or servers holding the version refuse it as
    "a different bundle under the same version name"."""
    import mlflow

    name = f"version-{version}.json"
    wanted = statement(bundle, claims)
    with tempfile.TemporaryDirectory(prefix="provenance-") as scratch:
        if name in {Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_DIR)}:
            logged = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{name}",
                                                              dst_path=scratch)).read_bytes()
            try:
                if provenance.verify_envelope(logged, trusted)[0] == wanted:
                    (bundle / provenance.FILE).write_bytes(logged)
                    (bundle / provenance.FILE).chmod(0o644)
                    return
                log.info("the statement logged for version %s no longer matches its bundle or run: signing anew",
                         version)
            except provenance.ProvenanceError as exc:
                log.warning("the statement logged for version %s is not usable (%s): signing anew", version, exc)
        write_provenance(bundle, claims, signer)
        shutil.copy(bundle / provenance.FILE, Path(scratch) / name)
        try:
            client.log_artifact(run_id, str(Path(scratch) / name), ARTIFACT_DIR)
        except Exception as exc:  # noqa: BLE001 - e.g. a user who may read the run but not write it: export goes on
            log.warning("could not log the provenance statement of version %s to run %s (%s): a later export of "
                        "it will sign anew and give a different manifest, which servers holding the version "
                        "refuse", version, run_id, exc)
