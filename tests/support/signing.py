"""The tests' bundle-signing key pair: bundles the tests build are signed with it, servers they start trust it."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from include.ml.config_file import SigningConfig
from include.release.signing import LocalSigner, ensure_local_key_pair, sign_bundle
from serving.signing import PublicKeys, load_public_keys


@functools.cache
def signing_config() -> SigningConfig:
    """A key pair made once per test process, in a temp dir removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="test-signing-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    config = SigningConfig(private_key=directory / "bundle-signing.key", public_key=directory / "bundle-signing.pub")
    ensure_local_key_pair(config)
    return config


def public_key_file() -> Path:
    return signing_config().public_key


def trusted_keys() -> PublicKeys:
    return load_public_keys(public_key_file())


def sign(bundle: Path, private_key: Path | None = None) -> str:
    """Sign the bundle's manifest with the test key (or `private_key`); returns the manifest's sha256."""
    return sign_bundle(bundle, LocalSigner(private_key or signing_config().private_key))
