"""Signed pointers the tests write into stores, as the pipeline signs them (include/release/signing.py)."""

from __future__ import annotations

from pathlib import Path

from include.release.signing import LocalSigner, sign_pointer
from serving import pointer as pointers
from serving import store as store_mod
from tests.support.signing import signing_config


def pointer_for(store: Path, version: str, *, model: str | None = None, bundle_sha256: str | None = None,
                sequence_after: int | None = None, rollback: bool = False,
                private_key: Path | None = None) -> pointers.Pointer:
    """A pointer to <store>/<version> signed with the test key (or `private_key`), naming the model and manifest
    sha256 of that bundle unless told otherwise; its sequence is above the store's CURRENT (or `sequence_after`)."""
    if model is None or bundle_sha256 is None:
        manifest = store_mod.parse_manifest(store_mod.read_regular(store / version / store_mod.MANIFEST), version)
        model, bundle_sha256 = model or manifest.model, bundle_sha256 or manifest.sha256
    if sequence_after is None:
        current = pointers.peek(store_mod.read_pointer(store))
        sequence_after = current.sequence if current else None
    return sign_pointer(LocalSigner(private_key or signing_config().private_key), model, version, bundle_sha256,
                        sequence_after, rollback)


def token(store: Path, version: str, **kwargs: object) -> str:
    """The --pointer token of `pointer_for`."""
    return pointer_for(store, version, **kwargs).token  # type: ignore[arg-type]


def point(store: Path, version: str, **kwargs: object) -> pointers.Pointer:
    """Write a signed pointer to <store>/<version> as the store's CURRENT (what activate does, minus its checks)."""
    signed = pointer_for(store, version, **kwargs)  # type: ignore[arg-type]
    store_mod.write_pointer(store, signed.envelope)
    return signed


def named(store: Path, name: str = store_mod.CURRENT) -> str | None:
    """The version a store's CURRENT (or PREVIOUS) names, read without verifying: what a test asserts on."""
    found = pointers.peek(store_mod.read_pointer(store, name))
    return found.version if found else None


def signed_statement(private_key: Path | None = None, **fields: object) -> bytes:
    """An envelope over ANY pointer statement, signed with the test key (or `private_key`), skipping every check
    sign_pointer makes: what a test needs to show the server checks the fields themselves."""
    from serving.signing import key_id

    signer = LocalSigner(private_key or signing_config().private_key)
    defaults: dict[str, object] = {"model": "toy", "version": "1", "bundle_sha256": "0" * 64,
                                   "sequence": pointers.next_sequence(None), "rollback": False}
    payload = pointers.statement(**{**defaults, **fields})  # type: ignore[arg-type]
    return pointers.envelope(payload, signer.sign(payload), key_id(signer.public_key()))


def attacker_key(directory: Path) -> Path:
    """A P-256 key pair no server trusts (the private key's path)."""
    from include.ml.config_file import SigningConfig
    from include.release.signing import ensure_local_key_pair

    config = SigningConfig(private_key=directory / "attacker.key", public_key=directory / "attacker.pub")
    ensure_local_key_pair(config)
    return config.private_key
