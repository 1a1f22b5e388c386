"""Provenance statements in test bundles, as export writes them, and the ways an attacker might alter one."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from include.ml.config_file import SigningConfig
from include.release.provenance import statement, write_provenance
from include.release.signing import LocalSigner, ensure_local_key_pair
from serving import provenance, store
from serving.signing import key_id
from tests.support.bundles import remanifest
from tests.support.signing import sign, signing_config

SNAPSHOT_SHA256 = "5" * 64
CASES = ("signed-by-another-key", "subject-digest-changed", "payload-edited-signature-kept",
         "statement-of-another-version", "names-another-model", "edited-after-the-manifest-was-signed")


def claims_for(bundle: Path) -> dict[str, Any]:
    """A predicate like export's, about the model bundle.json names."""
    meta = json.loads((bundle / store.METADATA).read_text())
    return {"model": {"name": meta["name"], "version": meta["version"], "run_id": meta["run_id"]},
            "training": {"mlflow_run_id": meta["run_id"], "pipeline_run_id": "first"},
            "data": {"snapshot": "first/ingest/data.csv", "sha256": SNAPSHOT_SHA256, "bytes": 100},
            "validation": {"suite": "schema", "evaluated": 10, "passed": 10, "success": True},
            "code": {"commit": "0" * 40, "requirements_sha256": "6" * 64}}


def add_provenance(bundle: Path, private_key: Path | None = None) -> dict[str, Any]:
    """Sign a statement about the bundle's files into it (with the test key, or `private_key`), then its manifest
    with the test key, as export does; returns the statement."""
    stated = write_provenance(bundle, claims_for(bundle), LocalSigner(private_key or signing_config().private_key))
    remanifest(bundle)
    sign(bundle)
    return stated


def _edit_payload(bundle: Path, change: Any) -> None:
    """Change the statement inside the envelope, keeping the old signature."""
    envelope = json.loads((bundle / provenance.FILE).read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    change(statement)
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (bundle / provenance.FILE).write_text(json.dumps(envelope))


def tampered(good: Path, other: Path, target: Path, case: str, attacker_key: Path) -> Path:
    """A copy of `good` (a bundle with a statement) at `target` whose statement was altered as `case` says; the
    bundle's own manifest is signed with the trusted key unless the case says otherwise."""
    shutil.copytree(good, target)
    (target / provenance.FILE).unlink()
    if case == "signed-by-another-key":  # a statement made up by someone without the signing key
        ensure_local_key_pair(SigningConfig(private_key=attacker_key, public_key=attacker_key.with_suffix(".pub")))
        add_provenance(target, attacker_key)
    elif case == "subject-digest-changed":  # a trusted signature over a statement about other model bytes
        stated = statement(target, claims_for(target))
        stated["subject"][0]["digest"]["sha256"] = "f" * 64
        payload, signer = json.dumps(stated).encode(), LocalSigner(signing_config().private_key)
        (target / provenance.FILE).write_bytes(provenance.envelope(
            payload, signer.sign(provenance.pae(provenance.PAYLOAD_TYPE, payload)), key_id(signer.public_key())))
        remanifest(target)
        sign(target)
    elif case == "payload-edited-signature-kept":  # another snapshot claimed under the genuine signature
        add_provenance(target)
        _edit_payload(target, lambda s: s["predicate"]["data"].update(sha256="0" * 64))
        remanifest(target)
        sign(target)
    elif case == "statement-of-another-version":  # a genuine statement, of another bundle
        shutil.copy(other / provenance.FILE, target / provenance.FILE)
        remanifest(target)
        sign(target)
    elif case == "names-another-model":  # about these files, but claims they are another version's
        claims = claims_for(target)
        claims["model"]["version"] = "9"
        write_provenance(target, claims, LocalSigner(signing_config().private_key))
        remanifest(target)
        sign(target)
    elif case == "edited-after-the-manifest-was-signed":  # the store's file changed, the manifest kept
        add_provenance(target)
        _edit_payload(target, lambda s: s["predicate"]["data"].update(sha256="0" * 64))
    else:
        raise ValueError(case)
    return target
