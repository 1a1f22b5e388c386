"""Evaluation: score the trained model on the test set, explain it, register it, let the gate decide, write its
model card.

The steps live in their own modules: the metrics in include/ml/metrics.py, the plots in plots.py, the explanations
and the leakage warning in explanations.py, the champion/challenger gate in gate.py, the card in card.py;
evaluate() runs them in order.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from include.ml import artifacts, registry, tracking
from include.ml.components import card as model_card
from include.ml.components import explanations, gate, plots
from include.ml.components.gate import GateDecision
from include.ml.components.training import TrainingResult, estimator_of, split_xy
from include.ml.entities import EvaluationConfig
from include.ml.metrics import compute_metrics

log = logging.getLogger(__name__)

RESULT = "result.json"


@dataclass(frozen=True)
class EvaluationResult:
    model_name: str
    version: str
    mlflow_run_id: str
    mlflow_run_url: str
    test_rows: int
    metrics: dict[str, float]
    decision: GateDecision
    champion_version: str
    champion_metrics: dict[str, float]
    # release.strategy progressive: the version the gate passed becomes this, the release candidate, and the
    # champion stays until ml_release promotes it; None: the gate's decision moved (or kept) the champion
    candidate: str | None = None
    leakage: tuple[str, ...] = ()  # the leakage warnings (explanations.py), each naming its column

    def summary(self) -> str:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        verdict = "promoted" if self.decision.promoted else "not promoted"
        if self.candidate:
            verdict = (f"the release candidate (release.strategy: progressive; champion v{self.champion_version} "
                       "serves until ml_release promotes it)")
        warned = "".join(f"; WARNING {warning}" for warning in self.leakage)
        return f"{self.model_name} v{self.version}: {metrics}; {verdict}: {self.decision.reason}{warned}"

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links mlflow_run_url
        return {"model_name": self.model_name, "version": self.version, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_run_url": self.mlflow_run_url, "promoted": self.decision.promoted,
                "gate_reason": self.decision.reason, "champion_version": self.champion_version,
                "metrics": self.metrics, "champion_metrics": self.champion_metrics, "candidate": self.candidate,
                "leakage_warning": list(self.leakage)}


def evaluate(test_frame: pd.DataFrame, config: EvaluationConfig, trained: TrainingResult, output_dir: Path,
             force_promote: bool = False, data: model_card.TrainingData | None = None,
             train_frame: pd.DataFrame | None = None) -> EvaluationResult:
    """Score the trained model on the test set, explain it, register it, let the gate decide, and write its model
    card (`data`: the training snapshot the card names). `train_frame`, the training split, is what the
    single-column leakage check fits on and what the reference attribution profile explains; without it, both
    are left out."""
    tracking.configure(config.mlflow)
    name = config.mlflow.registered_model_name
    x, y = split_xy(test_frame, config.schema)
    model = registry.load_model(trained.model_uri)
    scores = compute_metrics(config.schema.task, model, x, y)
    figures, importance = _log_scores_and_plots(trained, config, model, scores, x, y)
    explained = _explain(trained, config, model, scores, x, y, output_dir, train_frame)
    version = registry.register(name, trained.model_uri, trained.mlflow_run_id)
    decision, champion_scores = gate.weigh(config, version, scores, x, y, force_promote)
    decision = gate.refuse_leakage(decision, explained.warnings, config.leakage.fail, force_promote)
    # The card is written before the alias moves: a card that fails to render or log promotes nothing.
    _write_card(model_card.CardFacts(
        name, version, trained.mlflow_run_url, trained.family, trained.estimator,
        estimator_of(model.named_steps["model"]).get_params(), config.schema, data, trained.train_rows, len(x),
        scores, decision.champion_version, champion_scores, decision.metric, decision.promoted, decision.reason,
        importance, figures, trained.calibration, explained), config, trained, output_dir)
    candidate = _candidate(config, decision, version)
    _record(name, version, trained, scores, decision, candidate, explained.warnings)
    moved = decision.promoted and not candidate
    champion = version if moved or decision.champion_version is None else decision.champion_version
    result = EvaluationResult(name, version, trained.mlflow_run_id, trained.mlflow_run_url, len(x), scores,
                              decision, champion, scores if moved else champion_scores,
                              candidate, explained.warnings)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("evaluate: %s", result.summary())
    return result


def _log_scores_and_plots(trained: TrainingResult, config: EvaluationConfig, model: Any, scores: dict[str, float],
                          x: pd.DataFrame, y: pd.Series) -> tuple[dict[str, bytes], dict[str, float]]:
    """The test metrics (`test_<metric>`) and plots on the training run; the plots and importance for the card."""
    import mlflow

    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()})
        mlflow.log_metric("test_rows", len(x))
        return plots.log_plots(config.schema, model, x, y)


def _explain(trained: TrainingResult, config: EvaluationConfig, model: Any, scores: dict[str, float],
             x: pd.DataFrame, y: pd.Series, output_dir: Path,
             train_frame: pd.DataFrame | None) -> explanations.Summary:
    """What drives the model's predictions and any leakage warning, logged to the training run."""
    import mlflow

    with mlflow.start_run(run_id=trained.mlflow_run_id):
        return explanations.explain_model(model, config, trained.family, x, y, scores, output_dir, train_frame)


def _write_card(facts: model_card.CardFacts, config: EvaluationConfig, trained: TrainingResult,
                output_dir: Path) -> None:
    """The card into the stage dir and the training run's artifacts; its short form is the version's description."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    card = model_card.build(facts, config.card)
    model_card.write(card, output_dir / model_card.ARTIFACT_DIR)
    client.log_artifacts(trained.mlflow_run_id, str(output_dir / model_card.ARTIFACT_DIR), model_card.ARTIFACT_DIR)
    client.update_model_version(facts.model_name, facts.version, description=card.description)


def _candidate(config: EvaluationConfig, decision: GateDecision, version: str) -> str | None:
    """The version as the release candidate when release.strategy is progressive and the gate passed it; the first
    version of a model (no champion to compare live traffic with) becomes the champion directly."""
    if config.release_strategy != "progressive" or not decision.promoted:
        return None
    if decision.champion_version is None or decision.champion_version == version:
        log.info("evaluate: no champion to release v%s against: it becomes the champion directly", version)
        return None
    return version


def _record(name: str, version: str, trained: TrainingResult, scores: dict[str, float],
            decision: GateDecision, candidate: str | None = None, leakage: tuple[str, ...] = ()) -> None:
    """Move the champion alias if the gate promoted (the candidate alias for a progressive release); tag the version
    and the run with the scores, the decision and any leakage warning (the run has its tag already)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    if candidate:
        registry.set_candidate(name, candidate)  # include/ml/registry.py (the release commands' helpers)
    elif decision.promoted:
        registry.promote(name, version, decision.reason)
    for key, value in scores.items():
        client.set_model_version_tag(name, version, f"test_{key}", f"{value:.6f}")
    client.set_model_version_tag(name, version, "gate_decision", decision.reason)
    if leakage:
        client.set_model_version_tag(name, version, explanations.TAG, explanations.tag_value(leakage))
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.set_tags({"registered_version": version, "gate_promoted": str(decision.promoted),
                         "gate_reason": decision.reason})
