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
