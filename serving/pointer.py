"""Signed pointers: what a store's CURRENT holds, and how a server decides whether to follow it.

A pointer is a signed statement (TUF-style "which version is current"):

    {"_type": "mlops-pointer/v1", "model": NAME, "version": V, "bundle_sha256": sha256 of V's MANIFEST.sha256,
     "sequence": int, "issued_at": ISO-8601 UTC, "rollback": bool,
     "candidate": {"version": C, "bundle_sha256": ..., "mode": "shadow" | "canary", "share": (0, 1]}}

`candidate` is optional (absent or null: no release). With it the server holds two models: in "shadow" mode the
share of requests `share` is also scored by the candidate off the request path; in "canary" mode that share is
answered by the candidate (serving/release.py).

wrapped in an envelope, the JSON CURRENT holds:

    {"payload": base64(statement bytes), "algorithm": "ecdsa-p256-sha256", "key_id": KEY_ID,
     "signature": base64(DER ECDSA P-256/SHA-256 over the payload bytes)}

On a command line it travels as a token, base64url(envelope bytes). The pipeline signs pointers with the bundle
key (include/release/signing.py: sign_pointer); a server follows one only if

- a key it trusts (SERVING_PUBLIC_KEY) signed it: an unsigned or plain-text CURRENT is refused;
- it names the served model (SERVING_MODEL_NAME; not set: the model of the first pointer the process applied,
  or of the store's last applied pointer, <store>/.sequence);
- it names a version directory of this store: a plain version name, a real directory, no symlink;
- its sequence is not lower than the last one applied (kept in memory by every worker and in <store>/.sequence,
  so a restarted server refuses an older pointer too);
- the bundle's manifest has the sha256 it names, and names the same model and version (serving/model.py).

A rollback is a new pointer with a higher sequence naming an older version, marked "rollback": true.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serving import store
from serving.signing import ALGORITHM, PublicKeys, SignatureError, verify_bytes

TYPE = "mlops-pointer/v1"
TOKEN = re.compile(r"^[A-Za-z0-9_=-]{1,4096}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


MODES = ("shadow", "canary")


class PointerError(store.BundleError):
    """A pointer is malformed, unsigned, wrongly signed, or names something this server must not serve."""


@dataclass(frozen=True)
class Candidate:
    """The release a pointer names beside its champion: the candidate bundle, the mode and the share."""

    version: str
    bundle_sha256: str
    mode: str  # "shadow" | "canary"
    share: float  # shadow: share of requests also scored by the candidate; canary: share answered by it

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "bundle_sha256": self.bundle_sha256, "mode": self.mode,
                "share": self.share}


@dataclass(frozen=True)
class Pointer:
    model: str
    version: str
    bundle_sha256: str
    sequence: int
    issued_at: str
    rollback: bool
    key_id: str
    envelope: bytes  # exactly what CURRENT holds
    candidate: Candidate | None = None

    @property
    def digest(self) -> str:
        """Names this pointer: the sha256 of its envelope."""
        return hashlib.sha256(self.envelope).hexdigest()

    @property
    def token(self) -> str:
        return encode_token(self.envelope)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "bundle_sha256": self.bundle_sha256,
                "sequence": self.sequence, "issued_at": self.issued_at, "rollback": self.rollback,
                "candidate": self.candidate.describe() if self.candidate else None}


def statement(model: str, version: str, bundle_sha256: str, sequence: int, rollback: bool = False,
              issued_at: str | None = None, candidate: Candidate | None = None) -> bytes:
    """The bytes a pointer's signature covers (the key "candidate" only when there is one: a pointer without a
    release keeps the exact bytes it had before releases existed)."""
    issued_at = issued_at or datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    fields: dict[str, Any] = {"_type": TYPE, "model": model, "version": version, "bundle_sha256": bundle_sha256,
                              "sequence": sequence, "issued_at": issued_at, "rollback": rollback}
    if candidate is not None:
        fields["candidate"] = {"version": candidate.version, "bundle_sha256": candidate.bundle_sha256,
                               "mode": candidate.mode, "share": candidate.share}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def envelope(payload: bytes, signature: bytes, signer_key_id: str) -> bytes:
    return json.dumps({"payload": base64.b64encode(payload).decode(), "algorithm": ALGORITHM,
                       "key_id": signer_key_id, "signature": base64.b64encode(signature).decode()},
                      sort_keys=True).encode() + b"\n"


def next_sequence(previous: int | None, now_ms: int | None = None) -> int:
    """max(now in ms, previous + 1): increasing even when clocks or two signings in one millisecond disagree."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return max(now_ms, (previous or 0) + 1)


def encode_token(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def decode_token(token: str) -> bytes:
    """The envelope bytes of a --pointer token (base64url, at most 4096 characters)."""
    if not TOKEN.match(token or ""):
        raise PointerError("a pointer token is base64url: 1-4096 characters from A-Z a-z 0-9 _ = -")
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError) as exc:
        raise PointerError(f"the pointer token is not valid base64url: {exc}") from None


def verify(data: bytes, trusted: PublicKeys, label: str = store.CURRENT) -> Pointer:
    """The pointer an envelope holds, once a trusted key's signature over its payload is checked."""
    try:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        payload = base64.b64decode(document["payload"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
        algorithm, signer = document["algorithm"], document["key_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PointerError(f"{label} is not a signed pointer ({type(exc).__name__}: {str(exc)[:80]}): a store's "
                           "CURRENT must be written by `python -m serving activate/refresh --pointer`") from None
    try:
        verify_bytes(payload, algorithm, signer, signature, trusted, label, "the pointer")
    except SignatureError as exc:
        raise PointerError(str(exc)) from None
    return _parse(payload, data, str(signer), label)


def _parse(payload: bytes, data: bytes, signer: str, label: str) -> Pointer:
    try:
        fields = json.loads(payload)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        pointer = Pointer(fields["model"], fields["version"], fields["bundle_sha256"], fields["sequence"],
                          fields["issued_at"], fields["rollback"], signer, data,
                          _candidate(fields.get("candidate"), label))
        kind = fields["_type"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PointerError(f"{label}: malformed pointer statement ({type(exc).__name__}: {str(exc)[:80]})") from None
    if kind != TYPE:
        raise PointerError(f"{label}: a {kind!r} statement, not a {TYPE!r} pointer")
    if not isinstance(pointer.model, str) or not pointer.model or not isinstance(pointer.version, str) \
            or not isinstance(pointer.issued_at, str) or not isinstance(pointer.rollback, bool) \
            or not isinstance(pointer.sequence, int) or isinstance(pointer.sequence, bool) or pointer.sequence < 0 \
            or not isinstance(pointer.bundle_sha256, str) or not _SHA256.match(pointer.bundle_sha256):
        raise PointerError(f"{label}: malformed pointer statement (a field has the wrong type)")
    try:
        store.check_version_name(pointer.version)
    except store.BundleError as exc:
        raise PointerError(f"{label} names no version directory of this store: {exc}") from None
    if pointer.candidate is not None and pointer.candidate.version == pointer.version:
        raise PointerError(f"{label}: the candidate is version {pointer.version}, the champion itself: a release "
                           "names another version")
    return pointer


def _candidate(fields: object, label: str) -> Candidate | None:
    """The statement's "candidate", strictly checked; None when absent or null."""
    if fields is None:
        return None
    if not isinstance(fields, dict) or set(fields) != {"version", "bundle_sha256", "mode", "share"}:
        raise PointerError(f"{label}: malformed candidate (an object with exactly version, bundle_sha256, mode, "
                           "share)")
    version, sha, mode, share = fields["version"], fields["bundle_sha256"], fields["mode"], fields["share"]
    if not isinstance(version, str) or not isinstance(sha, str) or not _SHA256.match(sha):
        raise PointerError(f"{label}: malformed candidate (version a string, bundle_sha256 64 hex digits)")
    if mode not in MODES:
        raise PointerError(f"{label}: candidate mode {json.dumps(mode)[:20]} is not one of {', '.join(MODES)}")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise PointerError(f"{label}: candidate share {json.dumps(share)[:20]} is not a number in (0, 1]")
    try:
        store.check_version_name(version)
    except store.BundleError as exc:
        raise PointerError(f"{label}: the candidate names no version directory of this store: {exc}") from None
    return Candidate(version, sha, mode, float(share))


def peek(data: bytes | None) -> Pointer | None:
    """A pointer's fields WITHOUT checking its signature (to show or protect what a store names), or None."""
    if not data:
        return None
    try:
        document = json.loads(data)
        return _parse(base64.b64decode(document["payload"], validate=True), data, str(document.get("key_id")), "")
    except (ValueError, KeyError, TypeError, PointerError):
        return None


def named_versions(store_dir: Path) -> set[str]:
    """The versions CURRENT and PREVIOUS name (champions and candidates), unverified: what pruning must keep."""
    named = [peek(store.read_pointer(store_dir, name)) for name in (store.CURRENT, store.PREVIOUS)]
    return {p.version for p in named if p} | {p.candidate.version for p in named if p and p.candidate}


def current(store_dir: Path, trusted: PublicKeys, name: str = store.CURRENT) -> Pointer | None:
    """The verified pointer of CURRENT (or PREVIOUS); None when there is none."""
    data = store.read_pointer(store_dir, name)
    return None if data is None else verify(data, trusted, name)


# --- the store's high-water mark -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Applied:
    """The last pointer applied to a store: what <store>/.sequence records."""

    sequence: int
    model: str
    digest: str


def read_applied(store_dir: Path) -> Applied | None:
    data = store.read_pointer(store_dir, store.SEQUENCE)
    if data is None:
        return None
    try:
        fields = json.loads(data)
        return Applied(int(fields["sequence"]), str(fields["model"]), str(fields["digest"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise PointerError(f"{store.SEQUENCE} is malformed ({type(exc).__name__}): the store's record of the last "
                           "pointer applied cannot be read; refusing to move backwards blind") from None


def write_applied(store_dir: Path, applied: Applied | None) -> None:
    """Record the last pointer applied (the caller holds the store's lock); None removes the record."""
    if applied is None:
        (store_dir / store.SEQUENCE).unlink(missing_ok=True)
        return
    store.write_pointer(store_dir, json.dumps({"sequence": applied.sequence, "model": applied.model,
                                               "digest": applied.digest}).encode() + b"\n", store.SEQUENCE)


def applied(pointer: Pointer) -> Applied:
    return Applied(pointer.sequence, pointer.model, pointer.digest)


def check_model(pointer: Pointer, model_name: str | None) -> None:
    if model_name is not None and pointer.model != model_name:
        raise PointerError(f"pointer names model {pointer.model!r}, but this server serves {model_name!r} "
                           "(SERVING_MODEL_NAME, or the model of the first pointer it applied)")


def check(pointer: Pointer, store_dir: Path, model_name: str | None, last: Applied | None) -> Path:
    """The (champion) bundle directory `pointer` names, once it is the pinned model, a version directory of this
    store and not older than `last` applied, and its candidate (if any) a version directory too; else
    PointerError. The candidate's directory: candidate_dir()."""
    check_model(pointer, model_name)
    if last is not None and (pointer.sequence < last.sequence
                             or (pointer.sequence == last.sequence and pointer.digest != last.digest)):
        raise PointerError(f"pointer to version {pointer.version} has sequence {pointer.sequence}, not above "
                           f"{last.sequence}, the last one applied: an older pointer is never followed again "
                           "(a rollback is a new pointer: python main.py --rollback)")
    candidate_dir(pointer, store_dir)
    return _version_dir(store_dir, pointer.version, "pointer names")


def candidate_dir(pointer: Pointer, store_dir: Path) -> Path | None:
    """The candidate's bundle directory (a real version directory of this store), None without a candidate."""
    if pointer.candidate is None:
        return None
    return _version_dir(store_dir, pointer.candidate.version, "pointer names candidate")


def as_candidate(pointer: Pointer) -> Pointer:
    """The pointer as its candidate's bundle is checked against (model, version and manifest sha256 it names)."""
    if pointer.candidate is None:
        raise PointerError("the pointer names no candidate")
    return replace(pointer, version=pointer.candidate.version, bundle_sha256=pointer.candidate.bundle_sha256,
                   candidate=None)


def _version_dir(store_dir: Path, version: str, what: str) -> Path:
    bundle = store_dir / version
    try:
        mode = os.lstat(bundle).st_mode
    except FileNotFoundError:
        raise PointerError(f"{what} version {version}, which is not in this store "
                           f"(available: {store.versions(store_dir)})") from None
    if not stat.S_ISDIR(mode):
        raise PointerError(f"{what} {version}, which is not a version directory of this store "
                           "(a symlink or a file)")
    return bundle
