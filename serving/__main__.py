"""Model store commands: `python -m serving {export,refresh,activate,rollback,status}`.

`activate` is the hot-swap trigger: it checks the bundle (checksums, load,
self-check) in its own process, moves the store's CURRENT pointer, and, given
--url, waits until the running server answers with the new version; if the
server refuses it or does not switch in time, the pointer is put back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from serving import store
from serving.model import ModelLoadError, load_bundle
from serving.probe import NotServing, wait_for_version

log = logging.getLogger("serving")


class ActivationError(Exception):
    pass


def activate(store_dir: Path, version: str, url: str | None, timeout: float, confirmations: int) -> dict[str, Any]:
    store.check_version_name(version)
    bundle = store_dir / version
    if not bundle.is_dir():
        raise ActivationError(f"no bundle {bundle}; available: {store.versions(store_dir)}")
    try:
        model = load_bundle(bundle)  # the same checks a server worker runs, before any server sees it
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SERVING_MODEL_STORE", "models")),
                        help="model store directory (default: $SERVING_MODEL_STORE or ./models)")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="copy a registered model version from MLflow into the store")
    exp.add_argument("--version", default="champion", help="version number or alias (default: champion)")
    exp.add_argument("--config-dir", help="pipeline config directory (MLflow URI and model name)")
    exp.add_argument("--activate", action="store_true", help="also make it the CURRENT version")
    for name, text in (("activate", "make VERSION the served one"), ("rollback", "go back to the PREVIOUS version")):
        cmd = sub.add_parser(name, help=text)
        if name == "activate":
            cmd.add_argument("version")
        cmd.add_argument("--url", default=os.environ.get("SERVING_URL") or None,
                         help="running server to confirm the switch on (default: $SERVING_URL; none: do not wait)")
        cmd.add_argument("--timeout", type=float, default=60.0)
        cmd.add_argument("--confirmations", type=int, default=10,
                         help="consecutive /version answers that must show the new version")
    ref = sub.add_parser("refresh", help="fetch VERSION from --source, verify it, activate it (the deploy step's "
                                         "command on every server)")
    ref.add_argument("--source", required=True, help="s3://bucket/prefix/model or a directory holding <version>/")
    ref.add_argument("--version", required=True)
    ref.add_argument("--url", default=os.environ.get("SERVING_URL") or None,
                     help="running server to confirm the switch on (default: $SERVING_URL; none: do not wait)")
    ref.add_argument("--timeout", type=float, default=60.0)
    ref.add_argument("--confirmations", type=int, default=10)
    sub.add_parser("status", help="versions in the store and the pointers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store_dir = args.store.resolve()
    try:
        if args.command == "export":
            from include.ml.configuration import ConfigurationManager
            from include.ml.tracking import configure

            mlflow_cfg = ConfigurationManager(args.config_dir).config.mlflow
            configure(mlflow_cfg)
            bundle = store.export(mlflow_cfg.registered_model_name, args.version, store_dir)
            result: dict[str, Any] = {"status": "exported", "bundle": str(bundle), "version": bundle.name}
            if args.activate:
                result = activate(store_dir, bundle.name, None, 0, 0)
        elif args.command == "refresh":
            store.fetch(args.source, args.version, store_dir)
            result = activate(store_dir, args.version, args.url, args.timeout, args.confirmations)
        elif args.command == "activate":
            result = activate(store_dir, args.version, args.url, args.timeout, args.confirmations)
        elif args.command == "rollback":
            previous = store.read_pointer(store_dir, store.PREVIOUS)
            if not previous:
                raise ActivationError(f"{store_dir} has no PREVIOUS version to roll back to")
            result = activate(store_dir, previous, args.url, args.timeout, args.confirmations)
        else:
            result = {"store": str(store_dir), "current": store.read_pointer(store_dir),
                      "previous": store.read_pointer(store_dir, store.PREVIOUS), "versions": store.versions(store_dir)}
    except (ActivationError, store.BundleError) as exc:
        print(json.dumps({"status": "failed", "command": args.command, "error": str(exc)}))
        log.error("%s failed: %s", args.command, exc)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
