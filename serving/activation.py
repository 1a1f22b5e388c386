"""Making a bundle in the store the served one: the hot-swap trigger of `python -m serving` and `main.py serve`.

`activate` checks the bundle (checksums, load, self-check) in its own process, moves the store's CURRENT
pointer (the old one becomes PREVIOUS), and, given a server URL, waits until the running server answers
with the new version; if the server refuses it or does not switch in time, the pointer is put back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from serving import store
from serving.model import ModelLoadError, load_bundle
from serving.probe import NotServing, wait_for_version
from serving.signing import PublicKeys

log = logging.getLogger(__name__)


class ActivationError(Exception):
    """The version is not in the store, failed its checks, or the server did not switch to it."""


def activate(store_dir: Path, version: str, trusted: PublicKeys, url: str | None = None, timeout: float = 60.0,
             confirmations: int = 10) -> dict[str, Any]:
    """Check the bundle with the server's own loader (signature with a `trusted` key first), then move CURRENT.
    The caller holds the store's lock (store.locked)."""
    store.check_version_name(version)
    bundle = store_dir / version
    if not bundle.is_dir():
        raise ActivationError(f"no bundle {bundle}; available: {store.versions(store_dir)}")
    try:
        model = load_bundle(bundle, trusted)  # the same checks a server worker runs, before any server sees it
    except ModelLoadError as exc:
        raise ActivationError(f"refused: {exc}") from exc
    previous = store.read_pointer(store_dir)
    if previous != version:
        if previous:
            store.write_pointer(store_dir, previous, store.PREVIOUS)
        store.write_pointer(store_dir, version)
    if url:
        try:
            wait_for_version(url.rstrip("/"), version, timeout, confirmations)
        except NotServing as exc:
            if previous and previous != version:
                store.write_pointer(store_dir, previous)
                log.error("put CURRENT back to %s", previous)
            raise ActivationError(str(exc)) from exc
    return {"status": "active", "name": model.name, "version": version,
            "previous": previous if previous != version else store.read_pointer(store_dir, store.PREVIOUS),
            "changed": previous != version}
