"""Signing bundles and pointers on the pipeline side: a local key pair (the embedded default) or an AWS KMS key
(production).

Both sign the manifest's bytes, and a pointer's statement bytes, with ECDSA P-256 over SHA-256, which is what
servers verify (serving/signing.py, serving/pointer.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from include.ml.config_file import SigningConfig
from include.ml.exceptions import DeploymentError
from serving import pointer as pointers
from serving.signing import PublicKeys, key_id, load_public_keys, signature_document
from serving.store import MANIFEST, SIGNATURE

log = logging.getLogger(__name__)


class Signer(Protocol):
    def public_key(self) -> ec.EllipticCurvePublicKey: ...
    def sign(self, data: bytes) -> bytes: ...  # a DER ECDSA signature over sha256(data)


class LocalSigner:
    """A PEM private key on this machine (keep it on the pipeline side, never on a server)."""

    def __init__(self, private_key: Path) -> None:
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise DeploymentError(f"{private_key}: the signing key must be an ECDSA P-256 private key")
        self._key = key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class KmsSigner:
    """An AWS KMS asymmetric key (ECC_NIST_P256, SIGN_VERIFY): only the digest travels, the key never leaves KMS.
    Credentials and endpoint come from boto3's usual chain (an instance or task role in production)."""

    def __init__(self, key_id_or_arn: str, region: str | None) -> None:
        import boto3

        self.key, self._kms = key_id_or_arn, boto3.client("kms", region_name=region)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        der = self._kms.get_public_key(KeyId=self.key)["PublicKey"]
        key = serialization.load_der_public_key(der)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise DeploymentError(f"KMS key {self.key} is not an ECC_NIST_P256 key")
        return key

    RAW_LIMIT = 4096  # KMS signs messages up to this size as they are; larger ones go as their SHA-256 digest

    def sign(self, data: bytes) -> bytes:
        # A manifest is a few hundred bytes: sent RAW, KMS hashes it with SHA-256 itself (and so does moto,
        # which does not implement MessageType=DIGEST). Either way the signature is ECDSA over sha256(data).
        raw = len(data) <= self.RAW_LIMIT
        return self._kms.sign(KeyId=self.key, Message=data if raw else hashlib.sha256(data).digest(),
                              MessageType="RAW" if raw else "DIGEST", SigningAlgorithm="ECDSA_SHA_256")["Signature"]


def signer_for(config: SigningConfig) -> Signer:
    """KMS when a key id is configured, else the local key pair (made on first use)."""
    if config.kms_key_id:
        return KmsSigner(config.kms_key_id, config.kms_region)
    ensure_local_key_pair(config)
    return LocalSigner(config.private_key)


def trusted_keys(config: SigningConfig) -> PublicKeys:
    """What the pipeline's own checks (export, verify) trust: the signer's public key."""
    if config.kms_key_id:
        key = KmsSigner(config.kms_key_id, config.kms_region).public_key()
        return {key_id(key): key}
    ensure_local_key_pair(config)
    return load_public_keys(config.public_key)


def ensure_local_key_pair(config: SigningConfig) -> None:
    """Create the local key pair if it does not exist: the private key 0600 in a 0700 directory."""
    if config.private_key.exists():
        if not config.public_key.exists():
            _write(config.public_key, _public_pem(LocalSigner(config.private_key).public_key()), 0o644)
        return
    key = ec.generate_private_key(ec.SECP256R1())
    config.private_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(config.private_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    _write(config.public_key, _public_pem(key.public_key()), 0o644)
    log.info("created the bundle-signing key pair %s (private, mode 0600) and %s (give this one to servers: "
             "SERVING_PUBLIC_KEY)", config.private_key, config.public_key)


@dataclass(frozen=True)
class SigningKeys:
    signer: str  # the private key file, or the KMS key
    public_key: Path  # what servers trust: SERVING_PUBLIC_KEY
    key_id: str

    def summary(self) -> str:
        return (f"bundles are signed with {self.signer} (key id {self.key_id[:16]}...); give servers "
                f"{self.public_key} as SERVING_PUBLIC_KEY")

    def xcom(self) -> dict[str, str]:
        return {"signer": self.signer, "public_key": str(self.public_key), "key_id": self.key_id}


def prepare_keys(config: SigningConfig) -> SigningKeys:
    """The signer ready to sign and its public key in `signing.public_key` (for KMS, fetched once from KMS)."""
    signer = signer_for(config)
    public = signer.public_key()
    if not config.public_key.exists():
        _write(config.public_key, _public_pem(public), 0o644)
    if key_id(public) not in load_public_keys(config.public_key):
        raise DeploymentError(f"{config.public_key} does not hold the signer's public key (key id "
                              f"{key_id(public)[:16]}...): servers given it would refuse every bundle")
    return SigningKeys(f"KMS key {config.kms_key_id}" if config.kms_key_id else str(config.private_key),
                       config.public_key, key_id(public))


def sign_bundle(bundle: Path, signer: Signer) -> str:
    """Write MANIFEST.sig for the bundle's manifest; returns the manifest's sha256 (what refresh commands carry)."""
    manifest = (bundle / MANIFEST).read_bytes()
    (bundle / SIGNATURE).write_bytes(signature_document(signer.sign(manifest), key_id(signer.public_key())))
    return hashlib.sha256(manifest).hexdigest()


def sign_pointer(signer: Signer, model: str, version: str, bundle_sha256: str, previous_sequence: int | None = None,
                 rollback: bool = False, candidate: pointers.Candidate | None = None) -> pointers.Pointer:
    """A signed pointer naming `model` `version` (its manifest's sha256), with sequence max(now in ms, previous + 1),
    and the release `candidate` if any. What `python -m serving refresh/activate --pointer` takes (`.token`) and a
    store's CURRENT holds (`.envelope`)."""
    public = signer.public_key()
    payload = pointers.statement(model, version, bundle_sha256, pointers.next_sequence(previous_sequence), rollback,
                                 candidate=candidate)
    envelope = pointers.envelope(payload, signer.sign(payload), key_id(public))
    return pointers.verify(envelope, {key_id(public): public}, "the pointer just signed")


class PointerSigner:
    """Signs the pointers of one deploy or rollback of `model`: each sequence above every pointer seen or signed."""

    def __init__(self, signer: Signer, trusted: PublicKeys, model: str) -> None:
        self.signer, self.trusted, self.model = signer, trusted, model
        self.last = 0

    def after(self, envelope: bytes | None) -> pointers.Pointer | None:
        """Take note of an existing pointer (a release store's CURRENT): later ones get a higher sequence. A pointer
        that does not verify (a store written before signed pointers) is ignored; the verified one is returned."""
        if envelope is None:
            return None
        try:
            seen = pointers.verify(envelope, self.trusted)
        except pointers.PointerError as exc:
            log.warning("ignoring a pointer that does not verify: %s", exc)
            return None
        self.last = max(self.last, seen.sequence)
        return seen

    def sign(self, version: str, bundle_sha256: str, rollback: bool = False,
             candidate: pointers.Candidate | None = None) -> pointers.Pointer:
        signed = sign_pointer(self.signer, self.model, version, bundle_sha256, self.last, rollback, candidate)
        self.last = signed.sequence
        return signed

    def rollback_to(self, token: str) -> pointers.Pointer:
        """A rollback pointer to what an earlier pointer (a server's PREVIOUS, as its refresh reported it) named:
        its version, and its release candidate if it had one; that pointer must verify and name this model."""
        earlier = pointers.verify(pointers.decode_token(token), self.trusted, "the earlier pointer")
        if earlier.model != self.model:
            raise DeploymentError(f"the earlier pointer names model {earlier.model!r}, not {self.model!r}")
        self.last = max(self.last, earlier.sequence)
        return self.sign(earlier.version, earlier.bundle_sha256, rollback=True, candidate=earlier.candidate)


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never over an existing key
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
