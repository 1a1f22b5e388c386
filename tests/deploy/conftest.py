"""Fixtures of the release tier: AWS mocked in this process (moto's mock_aws; the moto *server* is the session's
`s3_endpoint` of tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.fixture
def mocked_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """S3 (with the bucket fleet-bucket) and SSM clients on moto's in-process mock, with test credentials."""
    from moto import mock_aws

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SSM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="fleet-bucket")
        yield {"s3": s3, "ssm": boto3.client("ssm")}
