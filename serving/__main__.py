"""Model store commands on a serving host: `python -m serving {refresh,activate,rollback,status,ship-capture}`.

`refresh` is what the deploy step runs on every server: fetch a bundle, verify it, activate it. During a release
(the pointer names a candidate beside the champion) `--version` is either one: the bundle to fetch.
`activate` and `rollback` switch between bundles already in the store (serving/activation.py). Every command
that moves CURRENT needs `--pointer TOKEN`, a pointer the pipeline signed (serving/pointer.py): a server host
cannot sign, so it cannot pick a version on its own. `rollback` takes a rollback pointer naming the PREVIOUS
version (`python main.py --rollback` signs one and deploys it). Exporting a model from the MLflow registry into
a store is the pipeline's job: `python main.py export`.
`ship-capture` uploads the closed prediction capture files to S3 and deletes them (serving/capture.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from serving import pointer as pointers
from serving import store
from serving.activation import ActivationError, activate
from serving.capture_shipping import ShipError, ship
from serving.settings import Settings, SettingsError
from serving.signing import verify_signature

log = logging.getLogger("serving")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SERVING_MODEL_STORE", "models")),
                        help="model store directory (default: $SERVING_MODEL_STORE or ./models)")
    switch = argparse.ArgumentParser(add_help=False)  # the options of every command that moves CURRENT
    switch.add_argument("--url", default=os.environ.get("SERVING_URL") or None,
                        help="running server to confirm the switch on (default: $SERVING_URL; none: do not wait)")
    switch.add_argument("--timeout", type=float, default=60.0)
    switch.add_argument("--confirmations", type=int, default=10,
                        help="consecutive /version answers that must show the new version")
    switch.add_argument("--pointer", required=True, metavar="TOKEN",
                        help="the signed pointer to write as CURRENT (base64url; the deploy step sends it)")
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("refresh", parents=[switch], help="fetch VERSION from --source, verify it, activate it "
                                                           "(the deploy step's command on every server)")
    ref.add_argument("--source", required=True, help="s3://bucket/prefix/model or a directory holding <version>/")
    ref.add_argument("--version", required=True)
    ref.add_argument("--manifest-sha256", help="refuse any bundle whose manifest has another sha256 (default: the "
                                               "one the pointer names)")
    sub.add_parser("activate", parents=[switch], help="make VERSION the served one").add_argument("version")
    sub.add_parser("rollback", parents=[switch], help="go back to the PREVIOUS version, with a signed rollback "
                                                      "pointer naming it")
    sub.add_parser("status", help="versions in the store and the pointers")
    shipping = sub.add_parser("ship-capture", help="upload the closed capture files of SERVING_CAPTURE_DIR to S3, "
                                                   "then delete them (an EC2 systemd timer runs it)")
    shipping.add_argument("--to", required=True, help="s3://bucket/<prefix>/capture: files go to "
                                                      "<to>/<model>/<date>/<file>.jsonl.gz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store_dir = args.store.resolve()
    try:
        if args.command == "status":
            result = _status(store_dir, Settings.from_env())
        elif args.command == "ship-capture":
            result = _ship_capture(args.to, Settings.from_env())
        else:
            result = _switch(args, store_dir, Settings.from_env())
    except (ActivationError, store.BundleError, SettingsError, ShipError) as exc:
        print(json.dumps({"status": "failed", "command": args.command, "error": str(exc)}))
        log.error("%s failed: %s", args.command, exc)
        return 1
    print(json.dumps(result))
    return 0


def _ship_capture(destination: str, settings: Settings) -> dict[str, Any]:
    if settings.capture_dir is None:
        raise SettingsError("SERVING_CAPTURE_DIR is not set: there is no capture directory to ship")
    if not settings.capture_dir.is_dir():
        return {"status": "ok", "files": 0, "rows": 0, "destination": destination}  # the server captured nothing yet
    shipped = ship(settings.capture_dir, destination)
    log.info("%s", shipped.summary())
    return {"status": "ok", "files": shipped.files, "rows": shipped.rows, "destination": destination}


def _status(store_dir: Path, settings: Settings) -> dict[str, Any]:
    trusted = settings.trusted_keys()
    shown: dict[str, Any] = {"store": str(store_dir), "versions": store.versions(store_dir)}
    for name in (store.CURRENT, store.PREVIOUS):
        try:
            found = pointers.current(store_dir, trusted, name)
            shown[name.lower()] = found.describe() if found else None
        except store.BundleError as exc:
            shown[name.lower()] = {"refused": str(exc)}
    return shown


def _switch(args: argparse.Namespace, store_dir: Path, settings: Settings) -> dict[str, Any]:
    """refresh, activate or rollback, holding the store's lock; then prune bundles beyond the kept ones."""
    trusted = settings.trusted_keys()
    envelope = pointers.decode_token(args.pointer)
    with store.locked(store_dir):
        if args.command == "refresh":
            named = pointers.verify(envelope, trusted, "the pointer")
            last = pointers.read_applied(store_dir)  # refused before anything is downloaded:
            pointers.check_model(named, settings.model_name or (last.model if last else None))  # another model
            sha256 = _named_sha256(named, args.version)
            if args.manifest_sha256 and args.manifest_sha256 != sha256:
                raise ActivationError("--manifest-sha256 differs from the bundle sha256 the pointer names")
            # The signature is checked on the staged copy: a bundle nobody trusted never enters the store.
            store.fetch(args.source, args.version, store_dir, sha256,
                        check=lambda staged: verify_signature(staged, trusted))
            for version in _missing(named, store_dir):  # a server new to a release: the other model's bundle too
                store.fetch(args.source, version, store_dir, _named_sha256(named, version),
                            check=lambda staged: verify_signature(staged, trusted))
        elif args.command == "activate":
            _named_sha256(pointers.verify(envelope, trusted, "the pointer"), args.version)
        result = activate(store_dir, envelope, trusted, args.url, args.timeout, args.confirmations,
                          model_name=settings.model_name, rollback_only=args.command == "rollback")
        result["pruned"] = store.prune(store_dir, settings.keep_bundles, pointers.named_versions(store_dir))
    return result


def _missing(pointer: pointers.Pointer, store_dir: Path) -> list[str]:
    """The versions the pointer names (champion, candidate) that this store does not hold yet."""
    named = [pointer.version] + ([pointer.candidate.version] if pointer.candidate else [])
    return [version for version in named if not (store_dir / version).exists()]


def _named_sha256(pointer: pointers.Pointer, version: str) -> str:
    """The manifest sha256 the pointer names for `version`: its champion's or its candidate's."""
    if version == pointer.version:
        return pointer.bundle_sha256
    if pointer.candidate is not None and version == pointer.candidate.version:
        return pointer.candidate.bundle_sha256
    release = f" or its candidate {pointer.candidate.version}" if pointer.candidate else ""
    raise ActivationError(f"the pointer does not name version {version}: it names {pointer.version}{release}")


if __name__ == "__main__":
    sys.exit(main())
