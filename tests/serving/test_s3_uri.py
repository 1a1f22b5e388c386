"""serving/s3_uri.py, the one s3:// parser of both sides: the server's bundle downloads, capture shipping and the
EC2 bootstrap build their keys with it, as ingestion, batch outputs and the monitor do on the pipeline side."""

from __future__ import annotations

import pytest

from serving.deploy.bootstrap import BootstrapError, split_s3
from serving.s3_uri import parse_s3_uri


@pytest.mark.parametrize(("uri", "names", "key"), [
    ("s3://bucket/models/wine/3", ("MANIFEST.sha256",), "models/wine/3/MANIFEST.sha256"),
    ("s3://bucket/models/wine/3/", ("model/model.onnx",), "models/wine/3/model/model.onnx"),  # no "//"
    ("s3://bucket/", ("wine/2026-12-07/a.jsonl.gz",), "wine/2026-12-07/a.jsonl.gz"),  # the bucket's root
    ("s3://bucket", ("a",), "a"),
    ("s3://bucket/capture/", (), "capture"),
])
def test_keys_below_a_folder(uri: str, names: tuple[str, ...], key: str) -> None:
    assert parse_s3_uri(uri, prefix=True).key_below(*names) == key


@pytest.mark.parametrize(("uri", "error"), [
    ("https://bucket/models", "not an s3:// URI"),
    ("s3:///models", "is not an S3 bucket name"),
    ("s3://bucket/models//wine", "empty path segment"),
    ("s3://bucket/models/../wine", "'.' or '..' path segment"),
    ("s3://bucket/%6dodels", "percent-escape"),
])
def test_ambiguous_uris_are_refused(uri: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_s3_uri(uri, prefix=True)


def test_the_bootstrap_reads_its_source_with_it() -> None:
    assert split_s3("s3://bucket/models/wine") == split_s3("s3://bucket/models/wine/") == ("bucket", "models/wine")
    for uri in ("s3://bucket", "s3://bucket/", "s3://bucket/models//wine", "bucket/models"):
        with pytest.raises(BootstrapError, match="expected s3://bucket/prefix"):
            split_s3(uri)
