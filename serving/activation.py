"""Making a bundle in the store the served one: the hot-swap trigger of `python -m serving` and `main.py serve`.

`activate` takes a signed pointer (serving/pointer.py; the pipeline signs it), checks it as a server will (a
trusted signature, the served model, a version directory of this store, a sequence not below the store's last
applied one) and the bundle it names (signature, checksums, names, load, self-check) in its own process. Then it
writes the pointer as CURRENT (the old one becomes PREVIOUS) and records its sequence in <store>/.sequence. Given
a server URL, it waits until the running server answers with the new version; if the server refuses it or does
not switch in time, the old pointer is put back (workers that already applied the new one keep it: they never go
back to a lower sequence; the deploy's undo sends them a new, signed rollback pointer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from serving import pointer as pointers
from serving import store
from serving.model import ModelLoadError, load_bundle
from serving.probe import NotServing, wait_for_release
from serving.signing import PublicKeys

log = logging.getLogger(__name__)


class ActivationError(Exception):
    """The pointer or its bundle failed the checks, or the server did not switch to it."""


def activate(store_dir: Path, envelope: bytes, trusted: PublicKeys, url: str | None = None, timeout: float = 60.0,
             confirmations: int = 10, model_name: str | None = None, rollback_only: bool = False) -> dict[str, Any]:
    """Check the signed pointer `envelope` and the bundles it names (the champion, and a release's candidate) with
    the server's own checks, then make it CURRENT. `model_name` (SERVING_MODEL_NAME) pins the model; None: the
    model of the store's last applied pointer. With `rollback_only`, the pointer must be a rollback pointer naming
    the PREVIOUS version. The caller holds the store's lock (store.locked).

    PREVIOUS is the pointer before the last change of champion (what `rollback` goes back to); "changed" in the
    result means the served pair changed (champion or release), and "previous_pointer" is then the pointer the
    store held before: what an undo restores."""
    try:
        pointer = pointers.verify(envelope, trusted, "the pointer")
        last = pointers.read_applied(store_dir)
        if rollback_only:
            _check_rollback(store_dir, pointer, trusted)
        bundle = pointers.check(pointer, store_dir, model_name or (last.model if last else None), last)
        candidate = pointers.candidate_dir(pointer, store_dir)
    except store.BundleError as exc:
        raise ActivationError(f"refused: {exc}") from exc
    try:
        model = load_bundle(bundle, trusted, pointer)  # the same checks a server worker runs, before any sees it
        if candidate is not None:
            load_bundle(candidate, trusted, pointers.as_candidate(pointer))
    except ModelLoadError as exc:
        raise ActivationError(f"refused: {exc}") from exc
    old = store.read_pointer(store_dir)
    before = _verified(old, trusted)
    moved = before is None or before.version != pointer.version  # another champion
    changed = moved or before is None or before.candidate != pointer.candidate
    if old != pointer.envelope:
        if moved and old is not None:
            store.write_pointer(store_dir, old, store.PREVIOUS)
        store.write_pointer(store_dir, pointer.envelope)  # CURRENT first: the record never runs ahead of it
        pointers.write_applied(store_dir, pointers.applied(pointer))
    if url:
        release = pointer.candidate
        try:
            wait_for_release(url.rstrip("/"), pointer.version, {"version": release.version, "mode": release.mode,
                                                                "share": release.share} if release else None,
                             timeout, confirmations)
        except NotServing as exc:
            if changed and old is not None:
                pointers.write_applied(store_dir, last)  # the record first: it never runs ahead of CURRENT
                store.write_pointer(store_dir, old)
                log.error("put CURRENT back to %s", before.version if before else "the earlier pointer")
            raise ActivationError(str(exc)) from exc
    previous = before if changed else _verified(store.read_pointer(store_dir, store.PREVIOUS), trusted)
    return {"status": "active", "name": model.name, "version": pointer.version,
            "candidate": pointer.candidate.describe() if pointer.candidate else None,
            "previous": previous.version if previous else None,
            # what the deploy step signs a rollback pointer from, should it have to undo this switch
            "previous_pointer": previous.token if previous else None,
            "sequence": pointer.sequence, "rollback": pointer.rollback, "changed": changed}


def _check_rollback(store_dir: Path, pointer: pointers.Pointer, trusted: PublicKeys) -> None:
    previous = _verified(store.read_pointer(store_dir, store.PREVIOUS), trusted)
    if previous is None:
        raise ActivationError(f"{store_dir.name} has no (signed) PREVIOUS pointer to roll back to")
    if not pointer.rollback or pointer.version != previous.version:
        raise ActivationError(f"rollback needs a rollback pointer to version {previous.version} (PREVIOUS); this one "
                              f"names version {pointer.version}{'' if pointer.rollback else ' and is no rollback'}")


def _verified(data: bytes | None, trusted: PublicKeys) -> pointers.Pointer | None:
    """The pointer `data` holds if it verifies, else None (a store written before signed pointers)."""
    if data is None:
        return None
    try:
        return pointers.verify(data, trusted)
    except pointers.PointerError:
        return None
