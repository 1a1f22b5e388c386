"""What the train stage records for the provenance statement (include/ml/training_inputs.py)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from include.ml import training_inputs
from tests.support.project import REPO


def test_the_code_commit_is_the_checkouts_head_or_the_documented_variable_else_unknown(tmp_path: Path) -> None:
    # This checkout's HEAD (the pipeline test compares it with `git rev-parse HEAD`).
    assert re.fullmatch(r"[0-9a-f]{40}", training_inputs.code_commit(REPO, env={}))
    assert training_inputs.code_commit(REPO, env={"MLOPS_CODE_COMMIT": "abc123"}) == "abc123"  # an image's build
    assert training_inputs.code_commit(tmp_path, env={}) == "unknown"  # not a git checkout, nothing given


def test_inputs_name_the_snapshot_under_the_artifacts_root_and_become_run_tags(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy==2.0\n")
    ingested = {"source_uri": "data/wine.csv", "snapshot_path": str(tmp_path / "art" / "r1" / "ingest" / "data.csv"),
                "sha256": "a" * 64, "bytes": 42}
    validated = {"evaluated": 12, "passed": 12, "success": True}
    inputs = training_inputs.gather("r1", ingested, validated, tmp_path / "art", tmp_path)
    assert inputs.data.path == "r1/ingest/data.csv"  # found again under whatever root the checker has
    assert inputs.requirements_sha256 == hashlib.sha256(b"numpy==2.0\n").hexdigest()
    tags = inputs.tags()
    assert tags["provenance.data.sha256"] == "a" * 64 and tags["provenance.validation.passed"] == "12"
    assert tags["provenance.validation.success"] == "true" and tags["provenance.validation.suite"] == "schema"
    assert training_inputs.recorded_tags({**tags, "git_sha": "x"}) == {k[11:]: v for k, v in tags.items()}
