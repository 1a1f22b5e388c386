"""Shipping closed capture files to S3 (`python -m serving ship-capture`, an EC2 systemd timer), and the running
totals /metrics reports."""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.capture import closed_files
from serving.s3_uri import parse_s3_uri

log = logging.getLogger(__name__)

SHIPPED_FILE = "shipped.json"  # the shipper's running totals, read by /metrics


class ShipError(Exception):
    """Shipping capture files to S3 failed; the files not shipped stay for the next run."""


@dataclass(frozen=True)
class ShipResult:
    files: int
    rows: int
    destination: str

    def summary(self) -> str:
        return f"shipped {self.files} capture files ({self.rows} rows) to {self.destination}"


def ship(directory: Path, destination: str, client: Any = None) -> ShipResult:
    """Upload every closed capture file to `destination` (s3://bucket/prefix: the same <model>/<date>/<file>
    layout below it), deleting each after its upload succeeded; add the counts to <directory>/shipped.json.
    A failed upload leaves its file for the next run; ShipError at the end names them."""
    try:
        folder = parse_s3_uri(destination, prefix=True)
    except ValueError as exc:
        raise ShipError(f"the destination must be s3://bucket/prefix, got {destination!r}: {exc}") from None
    bucket = folder.bucket
    if client is None:
        import boto3

        client = boto3.client("s3")
    from botocore.exceptions import BotoCoreError, ClientError

    files = rows = 0
    failed = []
    for path in closed_files(directory):
        key = folder.key_below(path.relative_to(directory).as_posix())
        try:
            count = sum(1 for _ in gzip.open(path, "rb"))
            with path.open("rb") as body:  # one PUT: files are rotated far below S3's 5 GB single-PUT limit
                client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip")
        except (BotoCoreError, ClientError, OSError, EOFError) as exc:
            log.error("capture file %s not shipped to s3://%s/%s: %s", path, bucket, key, exc)
            failed.append(f"{path.name}: {exc}")
            continue
        path.unlink()
        files, rows = files + 1, rows + count
        log.info("shipped %s (%d rows) to s3://%s/%s", path.name, count, bucket, key)
    if files:
        _add_shipped(directory, files, rows)
    if failed:
        raise ShipError(f"{len(failed)} capture files not shipped to {destination} (kept for the next run; "
                        f"{files} shipped): {'; '.join(failed[:5])}")
    return ShipResult(files, rows, destination)


def shipped_totals(directory: Path) -> dict[str, int]:
    try:
        data = json.loads((directory / SHIPPED_FILE).read_text())
        return {"files": int(data["files"]), "rows": int(data["rows"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"files": 0, "rows": 0}


def _add_shipped(directory: Path, files: int, rows: int) -> None:
    totals = shipped_totals(directory)
    totals = {"files": totals["files"] + files, "rows": totals["rows"] + rows}
    tmp = directory / f".{SHIPPED_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(totals))
    os.replace(tmp, directory / SHIPPED_FILE)
