"""What a model was trained from, recorded on its MLflow training run: the provenance statement's inputs.

The train stage records, as `provenance.*` tags of the run: the ingest snapshot (its path under the artifacts
root and its sha256), the Great Expectations summary of the validate stage (suite, expectations evaluated and
met), the code commit and the sha256 of requirements.txt. Export copies them into the bundle's signed
provenance statement (include/release/provenance.py); `main.py verify-provenance` compares the two.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

CODE_COMMIT_ENV = "MLOPS_CODE_COMMIT"  # the commit, where the code is not a git checkout (an image, a tarball)
UNKNOWN = "unknown"
TAG_PREFIX = "provenance."
SUITE = "schema"  # the suite validate builds from schema.yaml (validation.build_suite)


@dataclass(frozen=True)
class DataSnapshot:
    """The ingest stage's byte-for-byte copy of the source."""

    source_uri: str
    path: str  # relative to the artifacts root: <pipeline run id>/ingest/data.csv
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ValidationSummary:
    """What Great Expectations checked on that snapshot before training."""

    suite: str
    evaluated: int
    passed: int
    success: bool


@dataclass(frozen=True)
class TrainingInputs:
    pipeline_run_id: str
    data: DataSnapshot
    validation: ValidationSummary
    code_commit: str  # git HEAD, $MLOPS_CODE_COMMIT, or "unknown"
    requirements_sha256: str  # of the project's requirements.txt ("unknown" when there is none)

    def tags(self) -> dict[str, str]:
        """The run tags that record it (MLflow tags are text)."""
        return {TAG_PREFIX + key: str(value).lower() if isinstance(value, bool) else str(value)
                for key, value in self.flat().items()}

    def flat(self) -> dict[str, Any]:
        """Dotted keys: data.sha256, validation.passed, code.commit, ... (also the names verify-provenance shows)."""
        flat: dict[str, Any] = {"pipeline_run_id": self.pipeline_run_id, "code.commit": self.code_commit,
                                "requirements.sha256": self.requirements_sha256}
        flat |= {f"data.{k}": v for k, v in asdict(self.data).items()}
        flat |= {f"validation.{k}": v for k, v in asdict(self.validation).items()}
        return flat

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recorded_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The `provenance.*` tags of a run, without the prefix: what the run says it was trained from."""
    return {key[len(TAG_PREFIX):]: value for key, value in tags.items() if key.startswith(TAG_PREFIX)}


def gather(pipeline_run_id: str, ingested: Mapping[str, Any], validated: Mapping[str, Any], artifacts_root: Path,
           project_root: Path) -> TrainingInputs:
    """From the ingest and validate stages' result.json files of this pipeline run."""
    snapshot = Path(ingested["snapshot_path"])
    try:
        where = snapshot.resolve().relative_to(artifacts_root.resolve()).as_posix()
    except ValueError:  # written elsewhere than the artifacts root: keep what ingest said
        where = str(snapshot)
    data = DataSnapshot(str(ingested["source_uri"]), where, str(ingested["sha256"]), int(ingested["bytes"]))
    validation = ValidationSummary(SUITE, int(validated["evaluated"]), int(validated["passed"]),
                                   bool(validated["success"]))
    return TrainingInputs(pipeline_run_id, data, validation, code_commit(project_root),
                          file_sha256(project_root / "requirements.txt"))


def code_commit(root: Path, env: Mapping[str, str] | None = None) -> str:
    """$MLOPS_CODE_COMMIT when set (an image built from a commit has no .git), else `git rev-parse HEAD` of the
    checkout, else "unknown"."""
    given = (os.environ if env is None else env).get(CODE_COMMIT_ENV, "").strip()
    if given:
        return given
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else UNKNOWN


def file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return UNKNOWN
