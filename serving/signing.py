"""Bundle signatures. A bundle's MANIFEST.sha256 lists every file's sha256; MANIFEST.sig signs those bytes.

A loader verifies the signature with the public keys it trusts (SERVING_PUBLIC_KEY, set by whoever runs the
server, never read from a bundle), then every file against the manifest, and only then reads the model.
The signature is ECDSA P-256 over SHA-256: the algorithm of the local key pair and of AWS KMS asymmetric keys,
so a server verifies both alike. The pipeline side signs (include/release/signing.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from serving.store import MANIFEST, SIGNATURE, BundleError, read_regular

ALGORITHM = "ecdsa-p256-sha256"
PublicKeys = Mapping[str, ec.EllipticCurvePublicKey]  # key id -> key


class SignatureError(BundleError):
    """The bundle is unsigned, signed by an untrusted key, or its signature does not match its manifest."""


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the key's DER SubjectPublicKeyInfo: names a key without trusting anything a bundle says."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_public_keys(path: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """The P-256 public keys of a PEM file (several, one after the other, while keys are rotated)."""
    text = path.read_bytes()
    keys = {}
    for block in text.split(b"-----END PUBLIC KEY-----")[:-1]:
        key = serialization.load_pem_public_key(block + b"-----END PUBLIC KEY-----\n")
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError(f"{path}: only ECDSA P-256 public keys are supported")
        keys[key_id(key)] = key
    if not keys:
        raise ValueError(f"{path} holds no PEM public key")
    return keys


def signature_document(signature: bytes, signer_key_id: str) -> bytes:
    """MANIFEST.sig: the DER signature over the manifest's bytes, and which key made it."""
    return json.dumps({"algorithm": ALGORITHM, "key_id": signer_key_id,
                       "signature": base64.b64encode(signature).decode()}, indent=2).encode() + b"\n"


def verify_signature(bundle: Path, trusted: PublicKeys) -> str:
    """Check MANIFEST.sig against MANIFEST.sha256 with a trusted key (files read without following symlinks);
    returns that key's id."""
    try:
        manifest, document = read_regular(bundle / MANIFEST), read_regular(bundle / SIGNATURE)
    except FileNotFoundError as exc:
        if not trusted:
            raise SignatureError(_no_keys(bundle.name)) from None
        raise SignatureError(f"{bundle.name}: unsigned ({Path(exc.filename).name} is missing)") from None
    return verify_manifest_signature(manifest, document, trusted, bundle.name)


def verify_manifest_signature(manifest: bytes | None, document: bytes | None, trusted: PublicKeys,
                              label: str) -> str:
    """The MANIFEST.sig `document` signs the `manifest` bytes with a trusted key; returns that key's id."""
    if not trusted:
        raise SignatureError(_no_keys(label))
    if manifest is None or document is None:
        raise SignatureError(f"{label}: unsigned ({MANIFEST if manifest is None else SIGNATURE} is missing)")
    try:
        parsed = json.loads(document)
        algorithm, signer, signature = parsed["algorithm"], parsed["key_id"], base64.b64decode(
            parsed["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{label}: malformed {SIGNATURE}: {exc}") from None
    verify_bytes(manifest, algorithm, signer, signature, trusted, label, MANIFEST)
    return str(signer)


def verify_bytes(data: bytes, algorithm: object, signer: object, signature: bytes, trusted: PublicKeys, label: str,
                 what: str) -> None:
    """ECDSA P-256/SHA-256 `signature` over `data` by the trusted key `signer`, or SignatureError."""
    if algorithm != ALGORITHM:
        raise SignatureError(f"{label}: signature algorithm {algorithm!r} is not {ALGORITHM!r}")
    key = trusted.get(str(signer))
    if key is None:
        raise SignatureError(f"{label}: signed by key {str(signer)[:16]}..., which is not trusted here "
                             f"(trusted: {', '.join(k[:16] + '...' for k in trusted)})")
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError(f"{label}: the signature does not match {what}") from None


def _no_keys(label: str) -> str:
    return (f"{label}: no trusted public key is configured (SERVING_PUBLIC_KEY), so nothing can be verified; "
            "every bundle and pointer is refused")
