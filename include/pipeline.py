"""Runs the stages for one pipeline run id; what `main.py` and the DAGs call.

Each stage reads the previous stages' outputs from <artifacts_root>/<run id>/ and writes its own, so any
stage can be re-run alone. Each `run_<stage>` returns its typed result: `.summary()` is the line for logs,
`.xcom()` the small dict a DAG task returns. A stage with nothing to do returns `Skipped`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from include.ml import artifacts
from include.ml.configuration import ConfigurationManager
from include.ml.exceptions import StageInputError

if TYPE_CHECKING:
    from include.ml.components.evaluation import EvaluationResult
    from include.ml.components.ingestion import IngestionResult
    from include.ml.components.training import TrainingResult
    from include.ml.components.transformation import TransformationResult
    from include.ml.components.tuning import SearchOpened, TuningResult, WorkerDone
    from include.ml.components.validation import ValidationResult
    from include.monitoring.drift import DriftReport
    from include.monitoring.monitor import MonitorResult
    from include.release.export import ExportResult
    from include.release.ports import DeploymentResult
    from include.release.progressive import ReleaseState, ReleaseStatus
    from include.release.provenance_check import ProvenanceReport
    from include.release.signing import SigningKeys
    from include.release.verify import VerificationResult

log = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "transform", "tune", "train", "evaluate", "deploy", "verify")


class StageResult(Protocol):
    def summary(self) -> str: ...
    def xcom(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Skipped:
    """A stage that had nothing to do (shown as skipped in Airflow, with the reason in the log)."""

    reason: str

    def summary(self) -> str:
        return self.reason

    def xcom(self) -> dict[str, Any]:
        return {"skipped": self.reason}


@dataclass(frozen=True)
class RollbackResult:
    model_name: str
    champion_before: str | None
    champion_after: str

    def summary(self) -> str:
        return f"{self.model_name}: champion is now version {self.champion_after} (was {self.champion_before})"

    def xcom(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "champion_before": self.champion_before,
                "champion_after": self.champion_after}


def _dir(cm: ConfigurationManager, run_id: str, stage: str) -> Path:
    return artifacts.stage_dir(cm.config.artifacts_root, run_id, stage)


def _read_parquet(path: str) -> Any:
    import pandas as pd

    if not Path(path).is_file():
        raise StageInputError(f"{path} is missing; run the stage that writes it first")
    return pd.read_parquet(path)


def run_ingest(cm: ConfigurationManager, run_id: str) -> IngestionResult:
    from include.ml.components import ingestion

    return ingestion.ingest(cm.ingestion(), _dir(cm, run_id, "ingest"))


def run_validate(cm: ConfigurationManager, run_id: str) -> ValidationResult:
    from include.ml.components import ingestion, validation

    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    return validation.validate(_read_parquet(ingested["data_path"]), cm.validation(), _dir(cm, run_id, "validate"))


def run_transform(cm: ConfigurationManager, run_id: str) -> TransformationResult:
    from include.ml.components import ingestion, transformation, validation

    checked = artifacts.read_json(_dir(cm, run_id, "validate") / validation.RESULT)
    if not checked["success"]:
        raise StageInputError(f"run {run_id} failed data validation; refusing to transform it")
    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    return transformation.transform(_read_parquet(ingested["data_path"]), cm.transformation(),
                                    _dir(cm, run_id, "transform"))


def run_tune(cm: ConfigurationManager, run_id: str) -> TuningResult | Skipped:
    """Search for the best family and hyperparameters on the training split (never the test split): the three
    steps below in this process, its tuning.workers workers as local processes when more than one (main.py)."""
    from include.ml.components import tuning

    if not cm.config.tuning.enabled:
        return _not_tuned(cm)
    return tuning.tune(_train_split(cm, run_id), cm.tuning(), run_id, _dir(cm, run_id, "tune"))


def run_tune_open(cm: ConfigurationManager, run_id: str) -> SearchOpened | Skipped:
    """Open (or resume) the run's shared study and its parent MLflow run; its xcom lists the worker indices."""
    from include.ml.components import tuning

    if not cm.config.tuning.enabled:
        return _not_tuned(cm)
    return tuning.open_search(_train_split(cm, run_id), cm.tuning(), run_id, _dir(cm, run_id, "tune"))


def run_tune_worker(cm: ConfigurationManager, run_id: str, worker: int, host: str | None = None) -> WorkerDone:
    """Worker `worker` runs trials against the opened study until the study-wide budget is spent."""
    from include.ml.components import tuning

    return tuning.search_worker(_train_split(cm, run_id), cm.tuning(), run_id, _dir(cm, run_id, "tune"), worker,
                                host)


def run_tune_collect(cm: ConfigurationManager, run_id: str) -> TuningResult:
    """The study's best trial: tune/result.json (what train fits) and the parent MLflow run's summary."""
    from include.ml.components import tuning

    return tuning.collect_search(cm.tuning(), run_id, _dir(cm, run_id, "tune"))


def _not_tuned(cm: ConfigurationManager) -> Skipped:
    why = ("the run's tune is off (trigger form: tune)" if cm.tune is False else
           "params.yaml has no tuning: section or says tuning.enabled: false")
    return Skipped(f"not tuned: {why}; train fits params.yaml's model as written")


def _train_split(cm: ConfigurationManager, run_id: str) -> Any:
    from include.ml.components import transformation

    split = artifacts.read_json(_dir(cm, run_id, "transform") / transformation.RESULT)
    return _read_parquet(split["train_path"])


def run_train(cm: ConfigurationManager, run_id: str) -> TrainingResult:
    """Fit params.yaml's model, or with tuning on, the tune stage's best configuration, on the training split."""
    from include.ml import training_inputs
    from include.ml.components import ingestion, training, transformation, tuning, validation

    split = artifacts.read_json(_dir(cm, run_id, "transform") / transformation.RESULT)
    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    validated = artifacts.read_json(_dir(cm, run_id, "validate") / validation.RESULT)
    config = cm.training()
    if cm.config.tuning.enabled:
        tuned = tuning.TuningResult(**artifacts.read_json(_dir(cm, run_id, "tune") / tuning.RESULT))
        config = tuned.training_config(config)
    inputs = training_inputs.gather(artifacts.safe_run_id(run_id), ingested, validated, cm.config.artifacts_root,
                                    cm.config.project_root)
    return training.train(_read_parquet(split["train_path"]), config, run_id, _dir(cm, run_id, "train"),
                          dataset_source=ingested["source_uri"], inputs=inputs)


def run_evaluate(cm: ConfigurationManager, run_id: str, force_promote: bool = False) -> EvaluationResult:
    from include.ml.components import card, evaluation, ingestion, training, transformation

    split = artifacts.read_json(_dir(cm, run_id, "transform") / transformation.RESULT)
    trained = training.TrainingResult(**artifacts.read_json(_dir(cm, run_id, "train") / training.RESULT))
    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    return evaluation.evaluate(_read_parquet(split["test_path"]), cm.evaluation(), trained,
                               _dir(cm, run_id, "evaluate"), force_promote=force_promote,
                               data=card.TrainingData(ingested["source_uri"], ingested["sha256"], ingested["rows"],
                                                      ingested.get("rows_without_target", 0)),
                               train_frame=_read_parquet(split["train_path"]))


def run_deploy(cm: ConfigurationManager, run_id: str, version: str | None = None,
               rollback: bool = False) -> DeploymentResult | Skipped:
    """Put `version` (default: this run's model, if evaluation promoted it) on the configured target; with
    `rollback` (main.py --rollback, ml_rollback), the signed pointer the servers follow says it is a rollback."""
    from include.ml.components import evaluation
    from include.release.deploy import deploy

    if version is None:
        evaluated = artifacts.read_json(_dir(cm, run_id, "evaluate") / evaluation.RESULT)
        if not evaluated["decision"]["promoted"]:
            return Skipped(f"not deployed: version {evaluated['version']} was not promoted "
                           f"({evaluated['decision']['reason']})")
        if evaluated.get("candidate"):  # release.strategy progressive: ml_release rolls it out step by step
            return Skipped(f"not deployed: version {evaluated['version']} is the release candidate "
                           "(release.strategy: progressive); ml_release shadows it, then canaries it, then promotes "
                           f"it, and champion v{evaluated['champion_version']} keeps serving until then")
        version = str(evaluated["version"])
    if cm.config.deployment.target == "none":
        return Skipped("not deployed: deployment.target is none")
    return deploy(cm.config, version, _dir(cm, run_id, "deploy"), rollback=rollback)


def run_verify(cm: ConfigurationManager, run_id: str) -> VerificationResult | Skipped:
    """Check every server this run deployed to answers as the deployed bundle does."""
    from include.release.deploy import RELEASE, RESULT
    from include.release.signing import trusted_keys
    from include.release.verify import verify_fleet

    deployed = _dir(cm, run_id, "deploy") / RESULT
    if not deployed.is_file():
        return Skipped("not verified: this run deployed nothing")
    record = artifacts.read_json(deployed)
    key = cm.config.serving_api_key
    return verify_fleet(record["version"], record["instances"], deployed.parent / RELEASE / record["version"],
                        _dir(cm, run_id, "verify"), trusted_keys(cm.config.signing),
                        key.get_secret_value() if key else None)


def run_rollback(cm: ConfigurationManager, version: str | None = None) -> RollbackResult:
    """Make `version` (default: the previous champion) the champion again; deploy it with run_deploy."""
    from mlflow.exceptions import MlflowException

    from include.ml import registry, tracking
    from include.ml.exceptions import RollbackError

    tracking.configure(cm.config.mlflow)
    name = cm.config.mlflow.registered_model_name
    before = registry.champion_version(name)
    try:
        result = RollbackResult(name, before, registry.rollback(name, version))
    except (LookupError, MlflowException) as exc:
        raise RollbackError(f"rollback of {name} failed: {exc}") from exc
    log.info("rollback: %s", result.summary())
    return result


def run_release_start(cm: ConfigurationManager, version: str, mode: str, share: float) -> ReleaseState:
    """Put `version` beside the champion on the configured target as a shadow or a canary of `share`."""
    from include.release import progressive

    return progressive.start(cm.config, version, mode, share)


def run_release_promote(cm: ConfigurationManager) -> ReleaseState:
    """The running release's candidate becomes the champion on every server and in the registry."""
    from include.release import progressive

    return progressive.promote(cm.config)


def run_release_abort(cm: ConfigurationManager, reason: str) -> ReleaseState:
    """Every server back to the champion alone; the candidate is tagged release.aborted=<reason>."""
    from include.release import progressive

    return progressive.abort(cm.config, reason)


def run_release_status(cm: ConfigurationManager) -> ReleaseStatus:
    """The store's pointer (champion, candidate) and what every server serves."""
    from include.release import progressive

    return progressive.status(cm.config)


def run_export(cm: ConfigurationManager, version: str = "champion", store: Path | None = None,
               activate: bool = False) -> ExportResult:
    """Copy a registered version (number or alias) into a model store (default: the local target's) as a
    verified bundle; with `activate`, also make it the version that store's servers serve."""
    from include.ml import tracking
    from include.release.export import export_to_store

    tracking.configure(cm.config.mlflow)
    return export_to_store(cm.config.mlflow.registered_model_name, version, store or cm.config.model_store,
                           cm.config.signing, activate)


def run_verify_provenance(cm: ConfigurationManager, version: str = "champion") -> ProvenanceReport:
    """Check a registered version's signed provenance statement against MLflow and the artifacts: the bundle in
    the local model store, or one exported into a temporary store."""
    from include.ml import tracking
    from include.release.provenance_check import verify_provenance

    tracking.configure(cm.config.mlflow)
    return verify_provenance(cm.config.mlflow.registered_model_name, version, cm.config.model_store,
                             cm.config.signing, cm.config.artifacts_root)


def run_keys(cm: ConfigurationManager) -> SigningKeys:
    """The bundle-signing keys of `signing:` (the local pair is made on first use); what servers must trust."""
    from include.release.signing import prepare_keys

    return prepare_keys(cm.config.signing)


@dataclass(frozen=True)
class DriftSignal:
    """The monitor found drift: the features and their statistics (what the drift Asset event announces)."""

    model_name: str
    version: str
    features: list[str]
    details: list[str]

    def summary(self) -> str:
        return f"drift in {self.model_name} v{self.version}: " + "; ".join(self.details)

    def xcom(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "version": self.version, "drifted": self.features}


def run_monitor(cm: ConfigurationManager, run_id: str, end: datetime | None = None) -> MonitorResult | Skipped:
    """Drift and live quality of the champion's captured traffic in the period before `end` (default: now)."""
    from include.monitoring.monitor import monitor

    result = monitor(cm.monitor(), run_id, end or datetime.now(timezone.utc), _dir(cm, run_id, "monitor"))
    return result or Skipped(f"nothing to monitor: {cm.config.mlflow.registered_model_name} has no champion yet")


def drift_signal(monitored: dict[str, Any]) -> DriftSignal | Skipped:
    """From run_monitor's XCom: the drift to announce, or Skipped (no drift, or no champion to monitor)."""
    if monitored.get("skipped") or not monitored.get("drifted"):
        return Skipped(f"no drift to announce ({monitored.get('skipped') or 'no feature drifted'})")
    return DriftSignal(monitored["model_name"], monitored["version"], monitored["drifted"],
                       monitored["drift_details"])


@dataclass(frozen=True)
class CandidateSignal:
    """Evaluate made a release candidate (release.strategy: progressive): what the candidate Asset event announces,
    and what starts ml_release."""

    model_name: str
    version: str
    champion: str

    def summary(self) -> str:
        return f"{self.model_name} v{self.version} is the release candidate against champion v{self.champion}"

    def xcom(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "version": self.version, "champion": self.champion}


def candidate_signal(evaluated: dict[str, Any]) -> CandidateSignal | Skipped:
    """From run_evaluate's XCom: the candidate to release, or Skipped (direct strategy, or the gate kept the
    champion)."""
    if not evaluated.get("candidate"):
        return Skipped(f"no release candidate: v{evaluated.get('version')} "
                       + ("was not promoted" if not evaluated.get("promoted") else "went out directly "
                          "(release.strategy: direct, or the model's first version)"))
    return CandidateSignal(evaluated["model_name"], evaluated["candidate"], evaluated["champion_version"])


def run_compare(cm: ConfigurationManager, reference: Path, current: Path) -> DriftReport:
    """`main.py monitor`: two CSV files (data_source.separator) compared with params.yaml's monitoring thresholds."""
    from include.monitoring.files import compare_files

    return compare_files(reference, current, cm.config.schema, cm.config.data_source.separator,
                         cm.config.monitoring_policy)


RUNNERS: dict[str, Callable[..., StageResult]] = {
    "ingest": run_ingest, "validate": run_validate, "transform": run_transform, "tune": run_tune,
    "train": run_train, "evaluate": run_evaluate, "deploy": run_deploy, "verify": run_verify,
}


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    seconds: float
    result: StageResult


def run(cm: ConfigurationManager, run_id: str, stages: tuple[str, ...] = STAGES, force_promote: bool = False,
        on_start: Callable[[int, str], None] | None = None,
        on_done: Callable[[int, StageOutcome], None] | None = None) -> list[StageOutcome]:
    """Run `stages` in order for `run_id`; the first failure propagates and stops the run."""
    outcomes = []
    for index, stage in enumerate(stages, start=1):
        if on_start:
            on_start(index, stage)
        started = time.perf_counter()
        options = {"force_promote": force_promote} if stage == "evaluate" else {}
        result = RUNNERS[stage](cm, run_id, **options)
        outcome = StageOutcome(stage, time.perf_counter() - started, result)
        outcomes.append(outcome)
        if on_done:
            on_done(index, outcome)
    return outcomes
