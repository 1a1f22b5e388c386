"""Model registry operations: idempotent registration, champion alias moves, history, rollback, and the
`candidate` alias of a progressive release (include/release/progressive.py)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
CANDIDATE = "candidate"  # the version a progressive release is trying out (shadow or canary)
ABORTED_TAG = "release.aborted"  # on a version whose release was aborted or ended: the reason
HISTORY_TAG = "champion_history"
HISTORY_LENGTH = 20  # tag values are size-limited; older entries stay on the versions' own tags


def load_model(model_uri: str) -> Any:
    """A logged or registered scikit-learn model (`runs:/...`, `models:/name/version`), built with the prediction
    server's own allow-list: never MLflow's pickle path, never the trusted-type list the MLmodel file carries.
    Raises serving.trust.UntrustedModelError for anything else."""
    import tempfile

    import mlflow
    import yaml

    from serving.trust import load_sklearn, read_model_dir

    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        return load_sklearn(read_model_dir(local), yaml.safe_load((local / "MLmodel").read_text()))


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def register(name: str, model_uri: str, run_id: str) -> str:
    """Register the run's logged model (models:/<model id>) once; a retry returns the version already registered."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Managed by the pipeline's champion/challenger gate.")
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return str(max(int(v.version) for v in existing))
    model_id = model_uri.removeprefix("models:/")
    return str(client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id).version)


def champion_version(name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def history(name: str) -> list[dict[str, Any]]:
    tag = _client().get_registered_model(name).tags.get(HISTORY_TAG)
    return json.loads(tag) if tag else []


def promote(name: str, version: str, reason: str) -> str | None:
    """Make `version` the champion; the old one becomes previous_champion. Returns the old version."""
    client = _client()
    client.get_model_version(name, version)  # fails clearly if the version does not exist
    previous = champion_version(name)
    if previous == version:
        return previous
    if previous is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = (history(name) + [{"version": version, "previous": previous, "at": at, "reason": reason}])
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries[-HISTORY_LENGTH:]))
    client.set_model_version_tag(name, version, "promoted_at", at)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    log.info("model %s: champion moved from version %s to %s (%s)", name, previous, version, reason)
    return previous


def rollback(name: str, version: str | None = None) -> str:
    """Make an earlier version champion again: `version`, or the previous champion by default."""
    client = _client()
    if version is None:
        from mlflow.exceptions import MlflowException

        try:
            version = str(client.get_model_version_by_alias(name, PREVIOUS_CHAMPION).version)
        except MlflowException as exc:
            raise LookupError(f"model {name!r} has no {PREVIOUS_CHAMPION} to roll back to") from exc
    promote(name, version, reason="rollback")
    return version


def candidate_version(name: str) -> str | None:
    """The version the `candidate` alias names, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, CANDIDATE).version)
    except MlflowException:
        return None


def set_candidate(name: str, version: str) -> None:
    """Point the `candidate` alias at `version` (which must exist); the champion alias does not move."""
    client = _client()
    client.get_model_version(name, version)  # fails clearly if the version does not exist
    client.set_registered_model_alias(name, CANDIDATE, version)
    log.info("model %s: version %s is the release candidate", name, version)


def clear_candidate(name: str) -> str | None:
    """Delete the `candidate` alias if it exists; returns the version it named."""
    version = candidate_version(name)
    if version is not None:
        _client().delete_registered_model_alias(name, CANDIDATE)
        log.info("model %s: version %s is no longer the release candidate", name, version)
    return version


def tag_version(name: str, version: str, key: str, value: str) -> None:
    """Set one tag on a model version (e.g. release.aborted=<reason>); values are cut to MLflow's 5,000 characters."""
    _client().set_model_version_tag(name, version, key, value[:5000])
