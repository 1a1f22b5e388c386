"""Bundles an attacker who can write a store, an S3 prefix or the registry might produce.

Each carries a payload that writes a marker file when the model is deserialized by a loader that trusts what
the bundle says about itself; the tests check the marker is never written.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
from pathlib import Path

import yaml

from include.ml.config_file import SigningConfig
from include.release.signing import ensure_local_key_pair
from serving import store
from tests.support.bundles import remanifest
from tests.support.signing import sign

ATTACK_TYPE = "tests.support.attacks.Marker"
CASES = ("pickle-format", "extra-trusted-type", "unsigned-manifest", "other-key", "signature-of-another-manifest")


class Marker:
    """A type a malicious skops file names: building it (skops calls __setstate__) writes the marker."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict) -> None:
        Path(state["path"]).write_text("code ran")
        self.__dict__.update(state)


class _Touch:
    """Unpickling this calls pathlib.Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.marker,)


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_Touch(marker))


def skops_payload(marker: Path) -> bytes:
    import skops.io

    return skops.io.dumps(Marker(str(marker)))


def _rewrite(bundle: Path, model_file: str, content: bytes, flavor: dict) -> None:
    """Put `content` in as the model, with an MLmodel that says what the attacker wants; regenerate the manifest."""
    model_dir = bundle / store.MODEL_DIR
    for old in model_dir.glob("model.*"):
        old.unlink()
    (model_dir / model_file).write_bytes(content)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(pickled_model=model_file, **flavor)
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    remanifest(bundle)


def tampered(good: Path, target: Path, case: str, marker: Path, attacker_key: Path) -> Path:
    """A copy of the signed bundle `good` at `target`, made hostile as `case` says."""
    shutil.copytree(good, target)
    meta = json.loads((target / store.METADATA).read_text())
    (target / store.METADATA).write_text(json.dumps({**meta, "version": target.name}))
    if case == "extra-trusted-type":  # the MLmodel lists the payload's type as trusted; signed with the real key
        _rewrite(target, "model.skops", skops_payload(marker),
                 {"serialization_format": "skops", "skops_trusted_types": ["numpy.dtype", ATTACK_TYPE]})
        sign(target)
        return target
    _rewrite(target, "model.pkl", pickle_payload(marker), {"serialization_format": "pickle"})
    if case == "pickle-format":  # a pickle model, signed with the real key (what a careless pipeline would do)
        sign(target)
    elif case == "other-key":  # signed, but by a key the servers do not trust
        ensure_local_key_pair(SigningConfig(private_key=attacker_key, public_key=attacker_key.with_suffix(".pub")))
        sign(target, attacker_key)
    elif case == "signature-of-another-manifest":  # a genuine signature, copied from the good bundle
        shutil.copy(good / store.SIGNATURE, target / store.SIGNATURE)
    elif case == "unsigned-manifest":  # the model changed and the manifest regenerated; the old signature stays
        pass
    else:
        raise ValueError(case)
    return target

