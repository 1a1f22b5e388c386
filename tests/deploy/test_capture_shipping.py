"""Shipping prediction capture files to S3 (`python -m serving ship-capture`, run by capture-ship.timer on EC2),
for real against a moto server: the contract's layout under the prefix, local files deleted only once uploaded,
totals on /metrics; and the systemd units that run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.capture import PART, CaptureWriter, closed_files
from serving.metrics import Metrics
from tests.support.assets import SHIP_TIMER, SHIP_UNIT, UNIT, USER_DATA, unit_settings
from tests.support.project import REPO

pytestmark = pytest.mark.integration  # a moto server, `python -m serving` in a child process


def ship_capture(capture: Path | None, destination: str, endpoint: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "SERVING_CAPTURE_DIR": str(capture or "")}
    done = subprocess.run([sys.executable, "-m", "serving", "ship-capture", "--to", destination], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def write_capture(directory: Path, requests: int = 40) -> int:
    writer = CaptureWriter(directory, rotate_bytes=3_000)
    for i in range(requests):
        rows = 1 + i % 2
        writer.submit(f"r{i}", "wine-quality" if i % 4 else "other-model", "3",
                      {"alcohol": np.full(rows, 9.5), "colour": np.array(["red"] * rows, dtype=object)}, rows,
                      [5.0] * rows, None)
    writer.close()
    return sum(1 + i % 2 for i in range(requests))


@pytest.fixture
def bucket(s3_endpoint: str) -> Any:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"capture-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return s3, name


def test_closed_files_are_shipped_in_the_contract_layout_then_deleted(bucket: Any, s3_endpoint: str,
                                                                      tmp_path: Path) -> None:
    s3, name = bucket
    capture = tmp_path / "capture"
    rows = write_capture(capture)
    files = {path.relative_to(capture).as_posix(): path.read_bytes() for path in closed_files(capture)}
    assert len(files) > 2 and {key.split("/")[0] for key in files} == {"wine-quality", "other-model"}
    still_open = capture / "wine-quality" / "2026-01-31" / f"host-1-20260131T000000000000Z-000001.jsonl.gz{PART}"
    still_open.parent.mkdir(parents=True)
    still_open.write_bytes(b"being written")

    code, result = ship_capture(capture, f"s3://{name}/models/capture/", s3_endpoint)
    assert code == 0, result
    assert (result["files"], result["rows"]) == (len(files), rows)
    listed = s3.list_objects_v2(Bucket=name)["Contents"]
    assert {o["Key"] for o in listed} == {f"models/capture/{key}" for key in files}  # the open .part stays home
    for key, data in files.items():
        assert s3.get_object(Bucket=name, Key=f"models/capture/{key}")["Body"].read() == data
    assert list(closed_files(capture)) == [] and still_open.exists()
    exposition = Metrics(capture).exposition().decode()
    assert f"serving_capture_shipped_files_total {float(len(files))}" in exposition
    assert f"serving_capture_shipped_rows_total {float(rows)}" in exposition

    code, again = ship_capture(capture, f"s3://{name}/models/capture", s3_endpoint)  # nothing new: nothing sent
    assert (code, again["files"]) == (0, 0)
    assert f"serving_capture_shipped_rows_total {float(rows)}" in Metrics(capture).exposition().decode()


def test_a_failed_upload_keeps_the_files_for_the_next_run(s3_endpoint: str, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    write_capture(capture, requests=4)
    before = sorted(closed_files(capture))
    code, result = ship_capture(capture, "s3://no-such-bucket-here/models/capture", s3_endpoint)
    assert code == 1 and result["status"] == "failed"
    assert f"{len(before)} capture files not shipped" in result["error"] and "NoSuchBucket" in result["error"]
    assert sorted(closed_files(capture)) == before
    assert "serving_capture_shipped_files_total 0.0" in Metrics(capture).exposition().decode()


@pytest.mark.parametrize("capture, destination, error", [
    (None, "s3://bucket/models/capture", "SERVING_CAPTURE_DIR is not set"),
    ("capture", "bucket/models/capture", "the destination must be s3://bucket/prefix"),
    ("capture", "s3:///models/capture", "the destination must be s3://bucket/prefix"),
    ("capture", "s3://bucket/models//capture", "empty path segment"),  # serving/s3_uri.py: S3 keys are literal
])
def test_bad_ship_settings_are_refused(s3_endpoint: str, tmp_path: Path, capture: str | None, destination: str,
                                       error: str) -> None:
    directory = None
    if capture:
        directory = tmp_path / capture
        write_capture(directory, requests=1)
    code, result = ship_capture(directory, destination, s3_endpoint)
    assert code == 1 and error in result["error"]


def test_the_ship_units_run_the_command_as_the_server_on_its_capture_dir(tmp_path: Path) -> None:
    server = {k: v[-1] for k, v in unit_settings(UNIT.read_text())["Service"].items()}
    ship = {k: v[-1] for k, v in unit_settings(SHIP_UNIT.read_text())["Service"].items()}
    timer = unit_settings(SHIP_TIMER.read_text())
    assert (ship["User"], ship["StateDirectory"], ship["WorkingDirectory"]) == \
        (server["User"], server["StateDirectory"], server["WorkingDirectory"])
    assert ship["ExecStart"] == "/opt/mlops/venv/bin/python -m serving ship-capture --to ${MLOPS_CAPTURE_SHIP_TO}"
    assert ship["EnvironmentFile"] == "/etc/mlops/serving.env" and ship["Type"] == "oneshot"
    assert "MLOPS_CAPTURE_SHIP_TO=s3://${BUCKET}/${PREFIX}/capture" in USER_DATA.read_text()
    assert timer["Install"]["WantedBy"] == ["timers.target"] and timer["Timer"]["OnUnitInactiveSec"] == ["5min"]
    if shutil.which("systemd-analyze") is None:
        return
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    for source in (SHIP_UNIT, SHIP_TIMER):
        (tmp_path / source.name).write_text(source.read_text().replace("/opt/mlops/venv/bin/python", str(python)))
    done = subprocess.run(["systemd-analyze", "verify", SHIP_UNIT.name, SHIP_TIMER.name], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
