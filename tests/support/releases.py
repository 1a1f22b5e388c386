"""Signed pointers that name a release (a champion plus a shadow or canary candidate), as the release commands sign
them (include/release/signing.py: sign_pointer(..., candidate=...))."""

from __future__ import annotations

from pathlib import Path

from include.release.signing import LocalSigner, sign_pointer
from serving import pointer as pointers
from serving import store as store_mod
from tests.support.signing import signing_config


def manifest_sha(store: Path, version: str) -> str:
    """The sha256 of <store>/<version>'s MANIFEST.sha256: what a pointer names."""
    return store_mod.parse_manifest(store_mod.read_regular(store / version / store_mod.MANIFEST), version).sha256


def candidate(store: Path, version: str, mode: str = "shadow", share: float = 1.0) -> pointers.Candidate:
    """The candidate <store>/<version> in `mode` with `share`."""
    return pointers.Candidate(version, manifest_sha(store, version), mode, share)


def release_pointer(store: Path, champion: str, release: pointers.Candidate | None, *, model: str = "toy",
                    sequence_after: int | None = None) -> pointers.Pointer:
    """A pointer to champion <store>/<champion> with `release` beside it (None: no release), signed with the test
    key, its sequence above the store's CURRENT (or `sequence_after`)."""
    if sequence_after is None:
        current = pointers.peek(store_mod.read_pointer(store))
        sequence_after = current.sequence if current else None
    return sign_pointer(LocalSigner(signing_config().private_key), model, champion, manifest_sha(store, champion),
                        sequence_after, candidate=release)


def point_release(store: Path, champion: str, release: pointers.Candidate | None, **kwargs: object) -> \
        pointers.Pointer:
    """Write `release_pointer` as the store's CURRENT (what activate does, minus its checks)."""
    signed = release_pointer(store, champion, release, **kwargs)  # type: ignore[arg-type]
    store_mod.write_pointer(store, signed.envelope)
    return signed


def make_narrow_bundle(store: Path, version: str, offset: float = 0.0) -> Path:
    """A regression toy bundle of model "toy" whose contract takes x1 only within [-1, 1] (the others' take
    [-10, 10]): a candidate whose contract refuses rows the champion accepts."""
    from include.ml.components.training import skops_trusted_types
    from tests.support.bundles import REGRESSION, install_bundle, toy_frame
    from tests.support.frames import pipeline_for

    columns = tuple(c.model_copy(update={"min": -1.0, "max": 1.0}) if c.name == "x1" else c for c in REGRESSION.columns)
    schema = REGRESSION.model_copy(update={"columns": columns})
    frame = toy_frame("regression", offset=offset)
    frame["x1"] = frame["x1"].clip(-1, 1)
    x, y = frame.drop(columns="y"), frame["y"]
    pipeline = pipeline_for(schema, "random_forest", {"n_estimators": 5})
    pipeline.fit(x, y)
    return install_bundle(store, version, pipeline, x, schema, skops_trusted_types(pipeline, "random_forest"))
