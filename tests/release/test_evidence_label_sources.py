"""Delayed labels from every allowed source: S3 (a real moto server, with the capture shipped there too) and
http(s) (python's http.server in a thread); a local file is tests/ml/test_monitoring.py's."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import boto3
import pandas as pd
import pytest

from include.ml.config_file import MonitoringSources
from include.ml.exceptions import MonitoringError
from include.monitoring.quality import read_ground_truth
from include.release.evidence import labelled_pairs
from tests.support.frames import schema

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
TRUTH = pd.DataFrame({"request_id": ["r0", "r1", "r2"], "row": [0, 0, 0], "y": [1.0, 2.0, 3.0]})


def paired_capture(rows: int = 3) -> bytes:
    lines = [{"request_id": f"r{i}", "row": 0, "timestamp": (WHEN + timedelta(seconds=i)).isoformat()[:19] + "Z",
              "model_name": "wine", "model_version": "1", "served_by": "champion", "prediction": float(i),
              "champion": {"version": "1", "prediction": float(i), "probabilities": None},
              "candidate": {"version": "2", "prediction": float(i) + 0.5, "probabilities": None}}
             for i in range(rows)]
    return gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())


def test_labels_and_pairs_from_s3(s3_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="fleet")
    s3.put_object(Bucket="fleet", Key="labels/truth.csv", Body=TRUTH.to_csv(index=False).encode())
    parquet = io.BytesIO()
    TRUTH.to_parquet(parquet)
    s3.put_object(Bucket="fleet", Key="labels/truth.parquet", Body=parquet.getvalue())
    s3.put_object(Bucket="fleet", Key="capture/wine/2026-12-06/host-1.jsonl.gz", Body=paired_capture())
    for key in ("labels/truth.csv", "labels/truth.parquet"):
        truth = read_ground_truth(f"s3://fleet/{key}", schema("regression"), s3_endpoint)
        assert truth["y"].tolist() == [1.0, 2.0, 3.0] and truth["request_id"].tolist() == ["r0", "r1", "r2"]
    sources = MonitoringSources(capture_dir="s3://fleet/capture", ground_truth_uri="s3://fleet/labels/truth.csv",
                                s3_endpoint_url=s3_endpoint)
    pairs = labelled_pairs(sources, schema("regression"), "wine", "1", "2", WHEN, WHEN + timedelta(hours=1))
    assert pairs is not None and pairs.y.tolist() == [1.0, 2.0, 3.0] and pairs.candidate.tolist() == [0.5, 1.5, 2.5]
    with pytest.raises(MonitoringError, match="could not be fetched"):
        read_ground_truth("s3://fleet/labels/absent.csv", schema("regression"), s3_endpoint)
    with pytest.raises(MonitoringError, match=r"'\.' or '\.\.' path segment"):
        read_ground_truth("s3://fleet/labels/../secret.csv", schema("regression"), s3_endpoint)


@pytest.fixture
def label_site(tmp_path: Path) -> Iterator[str]:
    TRUTH.to_csv(tmp_path / "truth.csv", index=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_labels_from_http(label_site: str) -> None:
    truth = read_ground_truth(f"{label_site}/truth.csv?day=2026-12-06", schema("regression"), timeout_seconds=5)
    assert truth["y"].tolist() == [1.0, 2.0, 3.0] and truth["row"].tolist() == [0, 0, 0]
    with pytest.raises(MonitoringError, match="could not be fetched .*: answered HTTP 404"):
        read_ground_truth(f"{label_site}/absent.csv", schema("regression"), timeout_seconds=5)
    with pytest.raises(MonitoringError, match="is refused: use a local path, s3:// or http"):
        read_ground_truth("ftp://example.org/truth.csv", schema("regression"))
