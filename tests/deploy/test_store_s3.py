"""A server fetching a bundle from s3://bucket/prefix/<version>/ (serving/store.py), against a moto server: the keys
come from serving/s3_uri.py, so a prefix with or without its trailing "/" reads the same objects, and a source S3
would take literally (an empty segment) is refused before anything is downloaded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import store as store_mod
from serving.s3_uri import parse_s3_uri
from serving.store import BundleError
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.integration  # a moto server


@pytest.fixture(scope="module")
def published(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Bundle version 1 under s3://<bucket>/models/toy/1/, as the deploy task publishes it."""
    import boto3

    bundle = make_bundle(tmp_path_factory.mktemp("published"), "1")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # boto3's usual chain, as on a server
        s3: Any = boto3.client("s3", region_name="us-east-1")
        bucket = f"bundles-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket, f"models/toy/1/{path.relative_to(bundle).as_posix()}")
        yield f"s3://{bucket}/models/toy", bundle


@pytest.mark.parametrize("tail", ["", "/"])
def test_a_bundle_is_fetched_from_its_prefix(published: tuple[str, Path], tmp_path: Path, tail: str) -> None:
    source, bundle = published
    digest = store_mod.sha256_file(bundle / store_mod.MANIFEST)
    installed = store_mod.fetch(source + tail, "1", tmp_path / "store", manifest_sha256=digest)
    assert installed == tmp_path / "store" / "1"
    assert (installed / store_mod.MANIFEST).read_bytes() == (bundle / store_mod.MANIFEST).read_bytes()
    store_mod.verify_manifest(installed)


def test_an_ambiguous_source_is_refused(published: tuple[str, Path], tmp_path: Path) -> None:
    source, _ = published
    with pytest.raises(BundleError, match="empty path segment"):
        store_mod.fetch(f"s3://{parse_s3_uri(source).bucket}/models//toy", "1", tmp_path / "store")
    assert not (tmp_path / "store" / "1").exists()
