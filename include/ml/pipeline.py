"""Runs the stages for one pipeline run id. Each stage reads the previous stage's outputs
from <artifacts_root>/<run id>/ and writes its own, so any stage can be re-run alone."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from include.ml import artifacts
from include.ml.configuration import ConfigurationManager

log = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "transform", "train", "evaluate", "deploy", "verify")


def _dir(cm: ConfigurationManager, run_id: str, stage: str) -> Path:
    return artifacts.stage_dir(cm.config.artifacts_root, run_id, stage)


def _read_parquet(path: str) -> Any:
    import pandas as pd

    if not Path(path).is_file():
        from include.ml.exceptions import StageInputError
        raise StageInputError(f"{path} is missing; run the stage that writes it first")
    return pd.read_parquet(path)


def run_ingest(cm: ConfigurationManager, run_id: str) -> Any:
    from include.ml.components import ingestion

    return ingestion.ingest(cm.ingestion(), _dir(cm, run_id, "ingest"))


def run_validate(cm: ConfigurationManager, run_id: str) -> Any:
    from include.ml.components import ingestion, validation

    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    return validation.validate(_read_parquet(ingested["data_path"]), cm.validation(), _dir(cm, run_id, "validate"))


def run_transform(cm: ConfigurationManager, run_id: str) -> Any:
    from include.ml.components import ingestion, transformation, validation
    from include.ml.exceptions import StageInputError

    checked = artifacts.read_json(_dir(cm, run_id, "validate") / validation.RESULT)
    if not checked["success"]:
        raise StageInputError(f"run {run_id} failed data validation; refusing to transform it")
    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    return transformation.transform(_read_parquet(ingested["data_path"]), cm.transformation(),
                                    _dir(cm, run_id, "transform"))


def run_train(cm: ConfigurationManager, run_id: str) -> Any:
    from include.ml.components import ingestion, training, transformation

    split = artifacts.read_json(_dir(cm, run_id, "transform") / transformation.RESULT)
    ingested = artifacts.read_json(_dir(cm, run_id, "ingest") / ingestion.RESULT)
    return training.train(_read_parquet(split["train_path"]), cm.training(), run_id, _dir(cm, run_id, "train"),
                          dataset_source=ingested["source_uri"])


def run_evaluate(cm: ConfigurationManager, run_id: str, force_promote: bool = False) -> Any:
    from include.ml.components import evaluation, training, transformation

    split = artifacts.read_json(_dir(cm, run_id, "transform") / transformation.RESULT)
    trained = training.TrainingResult(**artifacts.read_json(_dir(cm, run_id, "train") / training.RESULT))
    return evaluation.evaluate(_read_parquet(split["test_path"]), cm.evaluation(), trained,
                               _dir(cm, run_id, "evaluate"), force_promote=force_promote)


def run_deploy(cm: ConfigurationManager, run_id: str, version: str | None = None) -> Any:
    """Put `version` (default: this run's model, if evaluation promoted it) on the configured target."""
    from include.ml.components import deployment, evaluation

    config = cm.config.deployment
    if version is None:
        evaluated = artifacts.read_json(_dir(cm, run_id, "evaluate") / evaluation.RESULT)
        if not evaluated["decision"]["promoted"]:
            return deployment.Skipped(f"version {evaluated['version']} was not promoted "
                                      f"({evaluated['decision']['reason']})")
        version = str(evaluated["version"])
    if config.target == "none":
        return deployment.Skipped("deployment.target is none")
    return deployment.deploy(cm.config, version, _dir(cm, run_id, "deploy"))


def run_verify(cm: ConfigurationManager, run_id: str) -> Any:
    """Check every server this run deployed to answers as the registered model does."""
    from include.ml.components import deployment

    deployed = _dir(cm, run_id, "deploy") / deployment.RESULT
    if not deployed.is_file():
        return deployment.Skipped("this run deployed nothing")
    return deployment.verify_fleet(artifacts.read_json(deployed), _dir(cm, run_id, "deploy") / "release",
                                   _dir(cm, run_id, "verify"))


RUNNERS: dict[str, Callable[..., Any]] = {
    "ingest": run_ingest, "validate": run_validate, "transform": run_transform,
    "train": run_train, "evaluate": run_evaluate, "deploy": run_deploy, "verify": run_verify,
}


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    seconds: float
    result: Any


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
