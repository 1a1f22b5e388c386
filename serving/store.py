"""The model store on a serving host: versioned bundles and the pointer the servers follow.

    <store>/<version>/bundle.json       name, version, run id, trained at, metrics
    <store>/<version>/model/            the MLflow model directory
    <store>/<version>/model_card.html   the model card (and model_card.md); bundles exported before cards lack it
    <store>/<version>/model.onnx        the model converted at export (ONNX Runtime serves it if it agrees with the
                                        model); absent when it could not be, or exported before conversion moved there
    <store>/<version>/provenance.json   the signed provenance statement (serving/provenance.py); absent in older bundles
    <store>/<version>/MANIFEST.sha256   the model name and version, and the checksum of every file above
    <store>/<version>/MANIFEST.sig      the signature over the manifest (serving/signing.py)
    <store>/CURRENT                     the signed pointer the servers follow (serving/pointer.py)
    <store>/PREVIOUS                    the pointer CURRENT held before
    <store>/.sequence                   the highest pointer sequence applied to this store, and its model

Bundles are written beside the live one and never modified, so the previous
version is always on disk for an instant rollback. A bundle holds regular files and directories only: a
symlink, a FIFO or a device anywhere in it refuses the whole bundle. The loader reads every file once
(`read_files`), checks those bytes, and builds the model from the same bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from serving.s3_uri import parse_s3_uri

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
SEQUENCE = ".sequence"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BundleError(Exception):
    """A bundle is missing, incomplete or does not match its checksums."""


def check_version_name(version: str) -> str:
    if not _VERSION.match(version):
        raise BundleError(f"invalid version name {version!r}: letters, digits, '.', '_', '-' (max 64)")
    return version


def sha256_file(path: Path) -> str:
    return hashlib.sha256(read_regular(path)).hexdigest()


_NOFOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def read_regular(path: Path, dir_fd: int | None = None, label: str | None = None) -> bytes:
    """The bytes of a regular file, refusing a symlink (O_NOFOLLOW) or anything that is not a regular file."""
    label = label or Path(path).name
    try:
        fd = os.open(path, _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)  # a FIFO must not block
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise BundleError(f"{label} is a symlink: bundles hold regular files only") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{label} is not a regular file: bundles hold regular files only")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_files(bundle: Path) -> dict[str, bytes]:
    """Every file of a bundle, read once into memory: relative path -> bytes. A symlink, FIFO, socket or device
    anywhere in the bundle (the bundle directory itself included) is refused; directories are walked by file
    descriptor, so nothing is followed out of the bundle while it is read."""
    try:
        top = os.open(bundle, _NOFOLLOW | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise BundleError(f"{bundle.name} is not a directory of this store (a symlink or a file)") from None
        raise BundleError(f"cannot read bundle {bundle.name}: {exc.strerror}") from None
    files: dict[str, bytes] = {}
    try:
        _read_tree(top, "", files)
    finally:
        os.close(top)
    return files


def _read_tree(directory: int, prefix: str, files: dict[str, bytes]) -> None:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        name = prefix + entry.name
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise BundleError(f"{name} is a symlink: bundles hold regular files and directories only")
        if stat.S_ISDIR(mode):
            sub = os.open(entry.name, _NOFOLLOW | os.O_DIRECTORY, dir_fd=directory)
            try:
                _read_tree(sub, name + "/", files)
            finally:
                os.close(sub)
        elif stat.S_ISREG(mode):
            files[name] = read_regular(Path(entry.name), dir_fd=directory, label=name)
        else:
            raise BundleError(f"{name} is not a regular file (a FIFO, socket or device): refused")


@dataclass(frozen=True)
class Manifest:
    """A parsed MANIFEST.sha256: the model and version it names, and each listed file's sha256."""

    model: str
    version: str
    files: dict[str, str]  # relative path -> sha256 hex
    sha256: str  # of the manifest's own bytes: what a signed pointer names


_HEADER = re.compile(r"^# (model|version): (.+)$")


def parse_manifest(data: bytes, label: str) -> Manifest:
    """`# model: NAME` and `# version: V` header lines (parsed, never taken as files), then `<sha256>  <path>`."""
    headers: dict[str, str] = {}
    listed: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{label}: {MANIFEST} is not UTF-8 text") from None
    for line in text.splitlines():
        if line.startswith("#"):
            match = _HEADER.match(line)
            if not match or match.group(1) in headers:
                raise BundleError(f"{label}: {MANIFEST}: unexpected header line {line[:80]!r}")
            headers[match.group(1)] = match.group(2)
            continue
        digest, _, name = line.partition("  ")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or name.startswith("/") \
                or ".." in name.split("/") or name in listed:
            raise BundleError(f"{label}: {MANIFEST}: unsafe or malformed line {line[:80]!r}")
        listed[name] = digest
    if "model" not in headers or "version" not in headers:
        raise BundleError(f"{label}: {MANIFEST} does not name the model and version it was signed for (a bundle "
                          "exported before signed pointers): refused; re-export it (`python main.py export`, after "
                          "removing the old version directory from the store)")
    return Manifest(headers["model"], headers["version"], listed, hashlib.sha256(data).hexdigest())


def _content(bundle: Path) -> list[Path]:
    """The files the manifest covers: all but the manifest itself and its signature."""
    return sorted(p for p in bundle.rglob("*") if p.is_file() and p.relative_to(bundle).as_posix()
                  not in (MANIFEST, SIGNATURE))


def write_manifest(bundle: Path, model: str, version: str) -> None:
    """MANIFEST.sha256 naming `model` and `version`, then every file's sha256 (the signature covers it all)."""
    check_version_name(version)
    if not model or "\n" in model or "\r" in model or model != model.strip():
        raise BundleError(f"invalid model name {model!r} for a manifest")
    files = _content(bundle)
    lines = [f"# model: {model}\n", f"# version: {version}\n"]
    lines += [f"{sha256_file(p)}  {p.relative_to(bundle).as_posix()}\n" for p in files]
    (bundle / MANIFEST).write_text("".join(lines))


def check_files(files: Mapping[str, bytes], label: str) -> Manifest:
    """The bytes read (`read_files`) match the manifest: every listed file with its checksum, nothing unlisted."""
    if MANIFEST not in files:
        raise BundleError(f"{label}: no {MANIFEST}")
    manifest = parse_manifest(files[MANIFEST], label)
    present = set(files) - {MANIFEST, SIGNATURE}
    if present != set(manifest.files):
        missing, unlisted = sorted(set(manifest.files) - present)[:5], sorted(present - set(manifest.files))[:5]
        raise BundleError(f"{label}: files differ from the manifest (missing {missing}, unlisted {unlisted})")
    for name, digest in manifest.files.items():
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise BundleError(f"{label}: checksum mismatch for {name}")
    return manifest


def verify_manifest(bundle: Path) -> Manifest:
    """Every listed file exists with its checksum, no unlisted file was added, and nothing is a symlink."""
    return check_files(read_files(bundle), bundle.name)


def read_metadata(files: Mapping[str, bytes], label: str) -> dict[str, Any]:
    try:
        meta = json.loads(files[METADATA])
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{label}: cannot read {METADATA}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{label}: {METADATA} is not a JSON object")
    return meta


def read_pointer(store: Path, name: str = CURRENT) -> bytes | None:
    """The raw bytes of a pointer file (CURRENT, PREVIOUS, .sequence); None when absent or empty. Verify them
    with serving/pointer.py before trusting a byte."""
    try:
        return read_regular(store / name) or None
    except FileNotFoundError:
        return None


def write_pointer(store: Path, data: bytes, name: str = CURRENT) -> None:
    """Atomic and durable: a reader sees the old or the new pointer, never a partial file, even after a crash."""
    store.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store, prefix=f".{name.lstrip('.')}.")
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the server may run as another user than this command
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
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


def prune(store: Path, keep: int, protected: set[str]) -> list[str]:
    """Remove bundles beyond the newest `keep`, never a `protected` one (CURRENT's and PREVIOUS's); the versions
    removed."""
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
    return sorted((p.name for p in store.iterdir()
                   if not p.is_symlink() and p.is_dir() and not p.name.startswith(".")),
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
            shutil.copytree(origin, staged, symlinks=True, dirs_exist_ok=True)  # a symlink stays one: refused
            _expect_manifest(staged, manifest_sha256, f"{source}/{version}")
        if existing.exists():
            if read_regular(staged / MANIFEST) != read_regular(existing / MANIFEST):
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

    try:
        folder = parse_s3_uri(uri, prefix=True)
    except ValueError as exc:
        raise BundleError(f"cannot download {uri}: {exc}") from None
    bucket = folder.bucket
    s3 = boto3.client("s3")
    try:
        s3.download_file(bucket, folder.key_below(MANIFEST), str(target / MANIFEST))
        _expect_manifest(target, manifest_sha256, uri)
        if manifest_only:
            return
        names = [SIGNATURE, *parse_manifest(read_regular(target / MANIFEST), uri).files]
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, folder.key_below(name), str(target / name))
    except (BotoCoreError, ClientError) as exc:
        raise BundleError(f"cannot download {uri}: {exc}") from exc
