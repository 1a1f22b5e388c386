"""A bundle's provenance statement: a DSSE envelope (https://github.com/secure-systems-lab/dsse) of an in-toto
Statement v1 (https://in-toto.io/Statement/v1) saying what the model was trained from.

    <bundle>/provenance.json = {"payloadType": "application/vnd.in-toto+json", "payload": base64(statement),
                                "signatures": [{"keyid": KEY_ID, "sig": base64(DER ECDSA P-256 over PAE)}]}

The signature is over DSSE's pre-authentication encoding (PAE) of the payload type and the payload bytes, with
the key that signs bundles (key id as in serving/signing.py). The statement's subjects are every file of the
bundle but provenance.json itself, with their sha256: a loader checks them against the manifest, so the statement
is about exactly the files served. The pipeline side writes it at export (include/release/provenance.py).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from serving.signing import PublicKeys
from serving.store import BundleError

FILE = "provenance.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# What the predicate describes: a model trained, gated and exported by this template's pipeline (docs/serving.md).
PREDICATE_TYPE = "https://github.com/mlops-pipeline/mlops-training/v1"


class ProvenanceError(BundleError):
    """The provenance statement is malformed, not signed by a trusted key, or not about this bundle's files."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed, so the type cannot be swapped under a signature."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def envelope(statement_bytes: bytes, signature: bytes, signer_key_id: str) -> bytes:
    return json.dumps({"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(statement_bytes).decode(),
                       "signatures": [{"keyid": signer_key_id, "sig": base64.b64encode(signature).decode()}]},
                      indent=2).encode() + b"\n"


def verify_envelope(data: bytes, trusted: PublicKeys) -> tuple[dict[str, Any], str]:
    """The statement of a provenance.json signed by a `trusted` key, and that key's id. Raises ProvenanceError."""
    try:
        document = json.loads(data)
        payload_type, payload = document["payloadType"], base64.b64decode(document["payload"], validate=True)
        signatures = [(str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in document["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ProvenanceError(f"{FILE}: malformed DSSE envelope: {type(exc).__name__}: {exc}") from None
    if payload_type != PAYLOAD_TYPE:
        raise ProvenanceError(f"{FILE}: payload type {payload_type!r} is not {PAYLOAD_TYPE!r}")
    signed, wrong = pae(payload_type, payload), []
    for keyid, signature in signatures:  # DSSE: any one valid signature by a trusted key
        key = trusted.get(keyid)
        if key is None:
            continue
        try:
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            wrong.append(keyid)
            continue
        return _statement(payload), keyid
    if wrong:
        raise ProvenanceError(f"{FILE}: the signature of key {wrong[0][:16]}... does not match the statement")
    raise ProvenanceError(f"{FILE}: not signed by a trusted key (signed by "
                          f"{', '.join(k[:16] + '...' for k, _ in signatures) or 'no key'}; trusted: "
                          f"{', '.join(k[:16] + '...' for k in trusted) or 'none'})")


def _statement(payload: bytes) -> dict[str, Any]:
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise ProvenanceError(f"{FILE}: the signed payload is not JSON: {exc}") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE \
            or statement.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceError(f"{FILE}: not an in-toto Statement v1 of predicate type {PREDICATE_TYPE}")
    return statement


def subjects(statement: Mapping[str, Any]) -> dict[str, str]:
    """name -> sha256 of the statement's subjects."""
    try:
        found = {str(s["name"]): str(s["digest"]["sha256"]) for s in statement["subject"]}
    except (KeyError, TypeError) as exc:
        raise ProvenanceError(f"{FILE}: malformed subject list: {type(exc).__name__}: {exc}") from None
    if len(found) != len(statement["subject"]):
        raise ProvenanceError(f"{FILE}: a subject is listed twice")
    return found


def check_subjects(statement: Mapping[str, Any], files: Mapping[str, str]) -> None:
    """The subjects are exactly the bundle's files (name -> sha256, as the verified manifest lists them) but
    provenance.json, each with its digest."""
    stated, actual = subjects(statement), {name: digest for name, digest in files.items() if name != FILE}
    if set(stated) != set(actual):
        raise ProvenanceError(f"{FILE}: its subjects are not the bundle's files (not in the bundle: "
                              f"{sorted(set(stated) - set(actual))[:5]}, not in the statement: "
                              f"{sorted(set(actual) - set(stated))[:5]})")
    differ = sorted(name for name, digest in stated.items() if actual[name] != digest)
    if differ:
        raise ProvenanceError(f"{FILE}: the sha256 of {differ[:5]} in the statement differs from the bundle's")


def check_model(statement: Mapping[str, Any], name: str, version: str, run_id: str | None) -> None:
    """The statement is about the model the bundle says it holds (bundle.json: name, version, training run)."""
    model = (statement.get("predicate") or {}).get("model") or {}
    stated = (model.get("name"), model.get("version"), model.get("run_id"))
    if stated != (name, version, run_id):
        raise ProvenanceError(f"{FILE}: it is about model {stated[0]!r} version {stated[1]!r} (run {stated[2]!r}), "
                              f"the bundle holds {name!r} version {version!r} (run {run_id!r})")


def manifest_digests(manifest: bytes) -> dict[str, str]:
    """name -> sha256 of a manifest's "<sha256>  <name>" lines (other lines, such as a header, are skipped)."""
    digests = {}
    for line in manifest.decode().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) and name:
            digests[name] = digest
    return digests


def verify(data: bytes, trusted: PublicKeys, files: Mapping[str, str], name: str, version: str,
           run_id: str | None) -> dict[str, Any]:
    """All of the above: signed by a trusted key, about these files and this model. Returns the statement."""
    statement, _ = verify_envelope(data, trusted)
    check_subjects(statement, files)
    check_model(statement, name, version, run_id)
    return statement
