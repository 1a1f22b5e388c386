"""The model store on a serving host: versioned bundles and the pointer the servers follow.

    <store>/<version>/bundle.json       name, version, run id, trained at, metrics
    <store>/<version>/model/            the MLflow model directory
    <store>/<version>/model_card.html   the model card (and model_card.md); bundles exported before cards lack it
    <store>/<version>/model.onnx        the model converted at export (ONNX Runtime serves it if it agrees with the
                                        model); absent when it could not be, or exported before conversion moved there
    <store>/<version>/MANIFEST.sha256   checksum of every file above
    <store>/<version>/MANIFEST.sig      the signature over the manifest (serving/signing.py)
    <store>/CURRENT                     the version the servers should serve
    <store>/PREVIOUS                    the version CURRENT pointed to before

Bundles are written beside the live one and never modified, so the previous
version is always on disk for an instant rollback.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.sha256"
SIGNATURE = "MANIFEST.sig"
METADATA = "bundle.json"
MODEL_DIR = "model"
CARD_HTML = "model_card.html"  # served at GET /model-card
CARD_MARKDOWN = "model_card.md"
ONNX_MODEL = "model.onnx"  # bundle.json's "onnx" says whether export converted the model, and if not why
CURRENT = "CURRENT"
PREVIOUS = "PREVIOUS"
LOCK = ".lock"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BundleError(Exception):
    """A bundle is missing, incomplete or does not match its checksums."""


def check_version_name(version: str) -> str:
    if not _VERSION.match(version):
        raise BundleError(f"invalid version name {version!r}: letters, digits, '.', '_', '-' (max 64)")
    return version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content(bundle: Path) -> list[Path]:
    """The files the manifest covers: all but the manifest itself and its signature."""
    return sorted(p for p in bundle.rglob("*") if p.is_file() and p.relative_to(bundle).as_posix()
                  not in (MANIFEST, SIGNATURE))


def write_manifest(bundle: Path) -> None:
    files = _content(bundle)
    lines = [f"{sha256_file(p)}  {p.relative_to(bundle).as_posix()}\n" for p in files]
    (bundle / MANIFEST).write_text("".join(lines))


def verify_manifest(bundle: Path) -> None:
    """Every listed file exists with its checksum, and no unlisted file was added."""
    manifest = bundle / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST}")
    listed: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if not digest or not name:
            raise BundleError(f"{manifest}: malformed line {line[:80]!r}")
        listed[name] = digest
    present = {p.relative_to(bundle).as_posix() for p in _content(bundle)}
    if present != set(listed):
        missing, unlisted = sorted(set(listed) - present)[:5], sorted(present - set(listed))[:5]
        raise BundleError(f"{bundle}: files differ from the manifest (missing {missing}, unlisted {unlisted})")
    for name, digest in listed.items():
        if sha256_file(bundle / name) != digest:
            raise BundleError(f"{bundle}: checksum mismatch for {name}")


def read_metadata(bundle: Path) -> dict[str, Any]:
    try:
        return json.loads((bundle / METADATA).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{bundle}: cannot read {METADATA}: {exc}") from exc


def read_pointer(store: Path, name: str = CURRENT) -> str | None:
    try:
        return (store / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def write_pointer(store: Path, version: str, name: str = CURRENT) -> None:
    """Atomic and durable: a reader sees the old or the new version, never a partial file, even after a crash."""
    store.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store, prefix=f".{name}.")
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the server may run as another user than this command
    with os.fdopen(fd, "w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, store / name)
    directory = os.open(store, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself reaches the disk
    finally:
        os.close(directory)


@contextmanager
def locked(store: Path, timeout: float = 300.0) -> Iterator[None]:
    """One command at a time may change a store (refresh, activate, rollback, prune)."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / LOCK, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BundleError(f"{store} is locked by another store command for over {timeout:.0f}s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prune(store: Path, keep: int) -> list[str]:
    """Remove bundles beyond the newest `keep`, never the CURRENT or PREVIOUS one; the versions removed."""
    protected = {read_pointer(store), read_pointer(store, PREVIOUS)}
    removed = [v for v in versions(store)[:-keep or None] if v not in protected] if keep > 0 else []
    for version in removed:
        trash = store / f".{version}.pruned"
        os.replace(store / version, trash)  # gone from the store at once, deleted after
        shutil.rmtree(trash, ignore_errors=True)
    if removed:
        log.info("pruned bundles %s from %s (keeping the newest %d, CURRENT and PREVIOUS)", removed, store, keep)
    return removed


def install(staged: Path, store: Path, version: str) -> Path:
    """Move a complete, verified bundle into the store as <version>/; a second install of it is a no-op."""
    check_version_name(version)
    target = store / version
    if target.exists():
        verify_manifest(target)
        shutil.rmtree(staged, ignore_errors=True)
        return target
    verify_manifest(staged)
    store.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)  # same filesystem: the bundle appears whole or not at all
    return target


def staging_dir(store: Path) -> Path:
    store.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=store, prefix=".staging-"))
    staged.chmod(0o755)  # becomes <store>/<version>: readable by a server running as another user
    return staged


def versions(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return sorted((p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))


def fetch(source: str, version: str, store: Path, manifest_sha256: str | None = None,
          check: Callable[[Path], object] | None = None) -> Path:
    """Copy bundle <source>/<version>/ into the store, verified; `source` is s3://bucket/prefix or a directory.

    With `manifest_sha256` (the deploy step sends the digest of the manifest it published), any other manifest
    is refused before a model file is fetched. `check` (the signature) runs on the staged copy before it is
    installed. A version already in the store is kept if it is the same bundle (same manifest), so fetching
    twice changes nothing; a different bundle under the same version name is refused.
    """
    check_version_name(version)
    staged = staging_dir(store)
    try:
        existing = store / version
        if source.startswith("s3://"):
            _download_s3(source.rstrip("/") + f"/{version}", staged, manifest_sha256, manifest_only=existing.exists())
        else:
            origin = Path(source.removeprefix("file://")) / version
            if not (origin / MANIFEST).is_file():
                raise BundleError(f"no bundle at {origin}")
            shutil.copytree(origin, staged, dirs_exist_ok=True)
            _expect_manifest(staged, manifest_sha256, f"{source}/{version}")
        if existing.exists():
            if (staged / MANIFEST).read_bytes() != (existing / MANIFEST).read_bytes():
                raise BundleError(f"{existing} holds a different bundle than {source}/{version}; "
                                  "version names must not be reused (remove the old one if this is intended)")
            verify_manifest(existing)
            return existing
        if check is not None:
            check(staged)
        return install(staged, store, version)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _expect_manifest(bundle: Path, manifest_sha256: str | None, origin: str) -> None:
    if manifest_sha256 and sha256_file(bundle / MANIFEST) != manifest_sha256:
        raise BundleError(f"{origin}/{MANIFEST} is not the manifest this deploy published (sha256 "
                          f"{sha256_file(bundle / MANIFEST)[:16]}..., expected {manifest_sha256[:16]}...): refused")


def _download_s3(uri: str, target: Path, manifest_sha256: str | None, manifest_only: bool = False) -> None:
    """The manifest first (checked against the expected digest), its signature, then exactly the files it lists
    (credentials and endpoint: boto3's usual chain)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    try:
        s3.download_file(bucket, f"{prefix}/{MANIFEST}", str(target / MANIFEST))
        _expect_manifest(target, manifest_sha256, uri)
        if manifest_only:
            return
        names = [SIGNATURE]
        for line in (target / MANIFEST).read_text().splitlines():
            name = line.partition("  ")[2]
            if not name or name.startswith("/") or ".." in Path(name).parts:
                raise BundleError(f"{uri}/{MANIFEST}: unsafe or malformed entry {line[:80]!r}")
            names.append(name)
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, f"{prefix}/{name}", str(target / name))
    except (BotoCoreError, ClientError) as exc:
        raise BundleError(f"cannot download {uri}: {exc}") from exc
