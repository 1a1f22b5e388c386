"""Ingestion reads local files, http(s) and s3 (a real moto server), CSV or zipped CSV, afresh every time."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from include.ml.components.ingestion import ingest
from include.ml.entities import DataSourceConfig, IngestionConfig
from include.ml.exceptions import IngestionError
from tests.support.network import free_port

CSV = b"a;b;y\n1;x;0.5\n2;y;1.5\n3;x;2.5\n"
COLUMNS = ("a", "b", "y")


def config(uri: str, separator: str = ";", zip_member: str | None = None, endpoint: str | None = None,
           timeout: float = 5) -> IngestionConfig:
    source = DataSourceConfig(uri=uri, separator=separator, zip_member=zip_member, s3_endpoint_url=endpoint,
                              timeout_seconds=timeout)
    return IngestionConfig(source, COLUMNS)


def test_local_csv_snapshot_rows_and_sha256(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    result = ingest(config(str(source)), tmp_path / "out")
    assert (result.rows, result.columns) == (3, 3)
    assert result.sha256 == hashlib.sha256(CSV).hexdigest()
    assert Path(result.snapshot_path).read_bytes() == CSV
    assert json.loads((tmp_path / "out" / "result.json").read_text())["sha256"] == result.sha256
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_reads_the_source_afresh(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    first = ingest(config(str(source)), tmp_path / "out")
    source.write_bytes(CSV + b"4;y;3.5\n")
    second = ingest(config(str(source)), tmp_path / "out")
    assert (first.rows, second.rows) == (3, 4)
    assert first.sha256 != second.sha256


def test_zip_with_one_csv(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("folder/data.csv", CSV)
        z.writestr("README.txt", "not data")
    assert ingest(config(str(archive)), tmp_path / "out").rows == 3


def test_zip_member_must_be_chosen_among_several(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("red.csv", CSV)
        z.writestr("white.csv", CSV + b"9;x;1\n")
    with pytest.raises(IngestionError, match="holds 2 CSV files .* set data_source.zip_member"):
        ingest(config(str(archive)), tmp_path / "out")
    assert ingest(config(str(archive), zip_member="white.csv"), tmp_path / "out").rows == 4


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving tmp_path/site."""
    site = tmp_path / "site"
    site.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(site))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_source(http_server: str, tmp_path: Path) -> None:
    (tmp_path / "site" / "data.csv").write_bytes(CSV)
    assert ingest(config(f"{http_server}/data.csv"), tmp_path / "out").rows == 3


def test_http_404_is_a_clear_error(http_server: str, tmp_path: Path) -> None:
    with pytest.raises(IngestionError, match=r"answered HTTP 404"):
        ingest(config(f"{http_server}/missing.csv"), tmp_path / "out")


@pytest.mark.integration  # a moto server
def test_s3_source(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="ingest-test")
    s3.put_object(Bucket="ingest-test", Key="raw/data.csv", Body=CSV)
    result = ingest(config("s3://ingest-test/raw/data.csv", endpoint=s3_endpoint), tmp_path / "out")
    assert result.rows == 3 and result.sha256 == hashlib.sha256(CSV).hexdigest()


@pytest.mark.parametrize("uri, message", [
    ("{tmp}/does-not-exist.csv", "is unreachable: .*No such file"),
    ("http://127.0.0.1:{port}/data.csv", "is unreachable: .*refused"),
    ("ftp://example.org/data.csv", "unsupported source"),
])
def test_unreachable_source(tmp_path: Path, uri: str, message: str) -> None:
    uri = uri.format(tmp=tmp_path, port=free_port())
    with pytest.raises(IngestionError, match=message):
        ingest(config(uri), tmp_path / "out")
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.integration  # a moto server
def test_missing_s3_object(s3_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(IngestionError, match="s3://no-such-bucket/data.csv is unreachable"):
        ingest(config("s3://no-such-bucket/data.csv", endpoint=s3_endpoint), tmp_path / "out")


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"a;b;y\n", "has a header but no data rows"),
])
def test_empty_sources(tmp_path: Path, content: bytes, message: str) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(content)
    with pytest.raises(IngestionError, match=message):
        ingest(config(str(source)), tmp_path / "out")


def test_wrong_separator(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    with pytest.raises(IngestionError, match=r"single column 'a;b;y' with separator ','.*data_source.separator"):
        ingest(config(str(source), separator=","), tmp_path / "out")


def test_failed_ingest_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    good = ingest(config(str(source)), tmp_path / "out")
    source.write_bytes(b"")
    with pytest.raises(IngestionError):
        ingest(config(str(source)), tmp_path / "out")
    assert Path(good.snapshot_path).read_bytes() == CSV
