"""release.strategy progressive: the gate's winner becomes the release candidate, the champion stays, deploy is
skipped and ml_pipeline's signal_candidate announces it; the first version of a model is released directly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from include.ml import registry
from include.ml.components.evaluation import evaluate
from include.ml.config_file import MlflowConfig
from include.pipeline import CandidateSignal, Skipped, candidate_signal
from tests.support.frames import dataset, evaluation_config, training_config


def test_a_progressive_release_makes_the_winner_a_candidate(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    from include.ml.components.training import train

    def trained(family: str, run_id: str, **hyper):
        return train(dataset("regression"), training_config("regression", family, mlflow_config, **hyper), run_id,
                     tmp_path / run_id, dataset_source="/data/unit.csv")

    test = dataset("regression", rows=60, seed=99)
    config = dataclasses.replace(evaluation_config("regression", mlflow_config), release_strategy="progressive")
    first = evaluate(test, config, trained("elasticnet", "weak", alpha=5.0), tmp_path / "e1")
    assert (first.decision.promoted, first.candidate, first.champion_version) == (True, None, "1")  # no champion yet
    assert isinstance(candidate_signal(first.xcom()), Skipped)

    second = evaluate(test, config, trained("random_forest", "strong", n_estimators=30), tmp_path / "e2")
    assert second.decision.promoted and second.decision.reason.startswith("better")
    assert (second.version, second.candidate, second.champion_version) == ("2", "2", "1")
    assert second.champion_metrics != second.metrics  # the champion's, which still serves
    assert "the release candidate (release.strategy: progressive; champion v1 serves" in second.summary()
    assert (registry.champion_version("unit-model"), registry.candidate_version("unit-model")) == ("1", "2")
    assert json.loads((tmp_path / "e2" / "result.json").read_text())["candidate"] == "2"
    assert candidate_signal(second.xcom()) == CandidateSignal("unit-model", "2", "1")


def test_deploy_leaves_a_candidate_to_ml_release(config_dir: Path, tmp_path: Path) -> None:
    from include.ml import artifacts
    from include.ml.configuration import ConfigurationManager
    from include.pipeline import run_deploy
    from tests.support.project import outputs_env

    cm = ConfigurationManager(config_dir, env=outputs_env(tmp_path / "outputs"))
    evaluated = {"version": "7", "candidate": "7", "champion_version": "6",
                 "decision": {"promoted": True, "reason": "better"}}
    artifacts.write_json(artifacts.stage_dir(cm.config.artifacts_root, "run-1", "evaluate") / "result.json", evaluated)
    skipped = run_deploy(cm, "run-1")
    assert isinstance(skipped, Skipped)
    assert skipped.reason.startswith("not deployed: version 7 is the release candidate (release.strategy: progressive)")
    assert "champion v6 keeps serving until then" in skipped.reason
