"""Atomic writes: readers see the old file or the new one, never a half-written one."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.ml import artifacts
from include.ml.exceptions import StageInputError


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "data.json"
    artifacts.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("{partial")
            raise RuntimeError("killed mid-write")
    assert artifacts.read_json(target) == {"v": 1}
    assert [p.name for p in target.parent.iterdir()] == ["data.json"]


def test_failed_directory_build_keeps_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "docs"
    with artifacts.atomic_dir(target) as tmp:
        (tmp / "index.html").write_text("v1")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(target) as tmp:
            (tmp / "index.html").write_text("half")
            raise RuntimeError("boom")
    assert (target / "index.html").read_text() == "v1"
    with artifacts.atomic_dir(target) as tmp:
        (tmp / "index.html").write_text("v2")
    assert (target / "index.html").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_airflow_run_ids_become_directory_names() -> None:
    assert artifacts.safe_run_id("manual__2026-11-27T02:00:00+00:00") == "manual__2026-11-27T02_00_00_00_00"
    with pytest.raises(ValueError):
        artifacts.safe_run_id("../")


def test_latest_run_and_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="run the ingest stage first"):
        artifacts.latest_run_id(tmp_path)
    artifacts.write_json(artifacts.stage_dir(tmp_path, "r1", "ingest") / "result.json", {})
    assert artifacts.latest_run_id(tmp_path) == "r1"
    with pytest.raises(StageInputError, match="is missing; run the stage that writes it first"):
        artifacts.read_json(artifacts.stage_dir(tmp_path, "r1", "train") / "result.json")
