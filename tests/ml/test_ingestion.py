"""Ingestion reads local files, http(s) and s3 (a real moto server), CSV or zipped CSV, afresh every time."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import struct
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.ml.components.ingestion import ingest, refused_source
from include.ml.config_file import DataSourceConfig
from include.ml.entities import IngestionConfig
from include.ml.exceptions import IngestionError, SourceTooLargeError
from tests.support.network import free_port, static_http_server

CSV = b"a;b;y\n1;x;0.5\n2;y;1.5\n3;x;2.5\n"
COLUMNS = ("a", "b", "y")


def config(uri: str, separator: str = ";", zip_member: str | None = None, endpoint: str | None = None,
           timeout: float = 5, **caps: Any) -> IngestionConfig:
    source = DataSourceConfig(uri=uri, separator=separator, zip_member=zip_member, s3_endpoint_url=endpoint,
                              timeout_seconds=timeout, **caps)
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
    with static_http_server(site) as url:
        yield url


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


@pytest.mark.integration  # a moto server
def test_a_percent_escaped_s3_source_is_refused_by_the_check_and_the_read(s3_endpoint: str, tmp_path: Path) -> None:
    """Finding 9: the allow-list compared the decoded key, the read used the literal one. `s3://b/%70ublic/x.csv`
    passed an `s3://b/public/` rule and read the object whose key is `%70ublic/x.csv`, outside `public/`."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="ingest-escape")
    s3.put_object(Bucket="ingest-escape", Key="public/data.csv", Body=CSV)
    for key in ("%70ublic/data.csv", "public//data.csv", "public/./data.csv"):  # objects outside the rule's meaning
        s3.put_object(Bucket="ingest-escape", Key=key, Body=b"a;b;y\n9;secret;9\n")
    allowed = ("s3://ingest-escape/public/",)
    for key in ("%70ublic/data.csv", "public//data.csv", "public/./data.csv"):
        uri = f"s3://ingest-escape/{key}"
        assert refused_source(uri, allowed), uri
        with pytest.raises(IngestionError, match=f"source {re.escape(repr(uri))} is refused: it holds"):
            ingest(config(uri, endpoint=s3_endpoint), tmp_path / "out")
    # What the rule admits is read from exactly the key that was checked.
    uri = "s3://ingest-escape/public/data.csv"
    assert refused_source(uri, allowed) is None
    assert ingest(config(uri, endpoint=s3_endpoint), tmp_path / "out").sha256 == hashlib.sha256(CSV).hexdigest()


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


# --- bounded inputs: size caps while reading, zip bombs; a refused source writes nothing -------------------------

def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_a_too_large_local_file_is_refused_before_reading(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(CSV)
    size = len(CSV)
    with pytest.raises(SourceTooLargeError, match=rf"the file is {size} bytes, over data_source.max_bytes = "
                                                  rf"{size - 1}; nothing was written"):
        ingest(config(str(source), max_bytes=size - 1), tmp_path / "out")
    assert nothing_written(tmp_path / "out")
    assert ingest(config(str(source), max_bytes=size), tmp_path / "out").bytes == size  # the cap itself is fine


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    with pytest.raises(IngestionError, match="is not a regular file"):
        ingest(config(str(tmp_path)), tmp_path / "out")


ENDLESS = b"1;x;0.5\n" * 8192  # what the server below repeats until the client hangs up


class SizeTricks(http.server.BaseHTTPRequestHandler):
    """/length: an honest Content-Length over the cap; /no-length: no Content-Length, a body that never ends;
    /lying-length: Content-Length 10 but a chunked body that never ends; /redirect?to=URL: a 302."""

    protocol_version = "HTTP/1.1"
    limit = 50 << 20  # a client that ignores every cap still ends the test

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path, _, query = self.path.partition("?")
        if path.endswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Connection", "close")
        if path.endswith("/length"):
            self.send_header("Content-Length", str(len(ENDLESS)))
        elif path.endswith("/lying-length"):
            self.send_header("Content-Length", "10")
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunked, sent = path.endswith("/lying-length"), 0
        try:
            while sent < self.limit:
                body = ENDLESS if not chunked else f"{len(ENDLESS):x}\r\n".encode() + ENDLESS + b"\r\n"
                self.wfile.write(body)
                sent += len(ENDLESS)
                if path.endswith("/length"):
                    return
        except OSError:  # the client hung up: what a capped reader does
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tricky_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SizeTricks)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path, found", [
    ("length", f"its Content-Length is {len(ENDLESS):,} bytes"),  # refused before reading the body
    ("no-length", "more than 1,000 bytes arrived"),  # an endless body: reading stops past the cap
    ("lying-length", "more than 1,000 bytes arrived"),  # Content-Length 10, yet the chunks never end
])
def test_an_oversize_download_is_refused_while_reading(tricky_server: str, tmp_path: Path, path: str,
                                                        found: str) -> None:
    with pytest.raises(SourceTooLargeError, match=found) as refused:
        ingest(config(f"{tricky_server}/{path}", max_bytes=1000), tmp_path / "out")
    assert refused.value.setting == "max_bytes" and refused.value.limit == 1000
    assert nothing_written(tmp_path / "out")


def test_redirects_stay_inside_the_allowed_sources(tricky_server: str, http_server: str, tmp_path: Path) -> None:
    (tmp_path / "site" / "data.csv").write_bytes(CSV)
    redirected = f"{tricky_server}/redirect?to={http_server}/data.csv"
    assert ingest(config(redirected), tmp_path / "out").rows == 3  # no list: the operator's source may redirect
    with pytest.raises(IngestionError, match=rf"redirects to {http_server}/data.csv, which is refused: it is not "
                                             "under any allowed source"):
        ingest(config(redirected, allowed_sources=(f"{tricky_server}/",)), tmp_path / "other")
    assert nothing_written(tmp_path / "other")
    allowed = (f"{tricky_server}/", f"{http_server}/")
    assert ingest(config(redirected, allowed_sources=allowed), tmp_path / "other").rows == 3


def zipped(data: bytes, name: str = "data.csv") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def patched(archive: bytes, field: str, value: int) -> bytes:
    """The zip with its only member's compressed or uncompressed size rewritten in both headers (a lie)."""
    local, central = {"compressed": 18, "uncompressed": 22}[field], {"compressed": 20, "uncompressed": 24}[field]
    data = bytearray(archive)
    struct.pack_into("<I", data, local, value)
    struct.pack_into("<I", data, data.rfind(b"PK\x01\x02") + central, value)
    return bytes(data)


BOMB = b"a;b;y\n" + b"1;x;0.5\n" * 1_000_000  # 8 MB of one line, a ~20 KB zip


@pytest.mark.parametrize("case, archive, caps, message", [
    ("ratio from the headers", zipped(BOMB), {},
     r"zip member data.csv declares a compression ratio of [\d,]+, over data_source.max_compression_ratio = 100"),
    ("size from the headers", zipped(CSV * 100), {"max_uncompressed_bytes": 1000},
     rf"declares {len(CSV) * 100:,} bytes uncompressed, over data_source.max_uncompressed_bytes = 1,000"),
    # the headers lie: a huge compressed size to pass the ratio check (the archive's own size is used instead)
    ("compressed size lies", patched(zipped(BOMB), "compressed", 50_000_000), {},
     "declares a compression ratio of"),
    # the headers lie: a small uncompressed size; decompression stops there and the CRC no longer matches
    ("uncompressed size lies", patched(zipped(BOMB), "uncompressed", 100), {}, r"is corrupt .*Bad CRC-32"),
])
def test_zip_bombs_are_refused_and_nothing_is_written(tmp_path: Path, case: str, archive: bytes,
                                                      caps: dict[str, Any], message: str) -> None:
    source = tmp_path / "data.zip"
    source.write_bytes(archive)
    with pytest.raises(IngestionError, match=message):
        ingest(config(str(source), **caps), tmp_path / "out")
    assert nothing_written(tmp_path / "out")


def test_a_normal_zip_passes_the_caps(tmp_path: Path) -> None:
    source = tmp_path / "data.zip"
    data = CSV + b"4;y;3.5\n" * 500  # compresses ~50:1
    source.write_bytes(zipped(data))
    assert ingest(config(str(source), max_uncompressed_bytes=len(data)), tmp_path / "out").rows == 503


@pytest.mark.integration  # a moto server
def test_an_oversize_s3_object_is_refused(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="ingest-caps")
    s3.put_object(Bucket="ingest-caps", Key="raw/data.csv", Body=CSV * 100)
    with pytest.raises(SourceTooLargeError, match=f"the object is {len(CSV) * 100:,} bytes, over data_source.max_"):
        ingest(config("s3://ingest-caps/raw/data.csv", endpoint=s3_endpoint, max_bytes=1000), tmp_path / "out")
    assert nothing_written(tmp_path / "out")


def schema_of(**options: Any) -> Any:
    from include.ml.schema_file import SchemaConfig

    return SchemaConfig.model_validate({"task": "regression", "columns": {
        "a": {"dtype": "int"}, "b": {"dtype": "category"}, "y": {"dtype": "int"}}, "target": "y", **options})


def test_rows_without_a_target_are_dropped_and_counted(tmp_path: Path) -> None:
    """pandas reads an int target with gaps as floats: once the gaps are gone it is whole numbers again."""
    import pandas as pd

    source = tmp_path / "data.csv"
    source.write_bytes(b"a;b;y\n1;x;5\n2;y;\n3;x;7\n4;;\n")
    result = ingest(IngestionConfig(config(str(source)).source, COLUMNS, schema_of()), tmp_path / "out")
    assert (result.rows, result.rows_without_target) == (2, 2)
    assert "2 rows without a target dropped" in result.summary()
    kept = pd.read_parquet(result.data_path)
    assert kept["y"].tolist() == [5, 7] and kept["y"].dtype == "int64"
    assert Path(result.snapshot_path).read_bytes().count(b"\n") == 5  # the snapshot is the source as it was

    kept_all = ingest(IngestionConfig(config(str(source)).source, COLUMNS, schema_of(
        target={"name": "y", "missing": "error"})), tmp_path / "strict")
    assert (kept_all.rows, kept_all.rows_without_target) == (4, 0)  # validation then names the missing targets


def test_a_file_with_no_target_at_all_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(b"a;b;y\n1;x;\n2;y;\n")
    with pytest.raises(IngestionError, match="has no row with a value of the target 'y'"):
        ingest(IngestionConfig(config(str(source)).source, COLUMNS, schema_of()), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_columns_not_in_the_schema_are_dropped_only_when_the_schema_says_so(tmp_path: Path) -> None:
    import pandas as pd

    source = tmp_path / "data.csv"
    source.write_bytes(b"a;b;y;comment;ts\n1;x;5;hi;0\n2;y;6;ho;1\n")
    ignoring = ingest(IngestionConfig(config(str(source)).source, COLUMNS, schema_of(columns_not_in_schema="ignore")),
                      tmp_path / "ignore")
    assert ignoring.ignored_columns == ["comment", "ts"] and ignoring.columns == 3
    assert list(pd.read_parquet(ignoring.data_path).columns) == ["a", "b", "y"]
    strict = ingest(IngestionConfig(config(str(source)).source, COLUMNS, schema_of()), tmp_path / "error")
    assert strict.columns == 5 and strict.ignored_columns == []  # validation names them
