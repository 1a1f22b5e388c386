"""Evaluation: held-out metrics, plots, and the champion/challenger gate."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from include.ml import artifacts, registry, tracking
from include.ml.components import card as model_card
from include.ml.components.training import TrainingResult, split_xy
from include.ml.entities import EvaluationConfig, PromotionConfig, SchemaConfig
from include.ml.exceptions import (
    ChampionGateError,
    IncompatibleChampionError,
    PipelineError,
    UnscorableChampionError,
)

log = logging.getLogger(__name__)

RESULT = "result.json"
IMPORTANCE_ROWS = 2000  # permutation importance on a sample keeps big test sets cheap


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    champion_version: str | None


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

    def summary(self) -> str:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        verdict = "promoted" if self.decision.promoted else "not promoted"
        return f"{self.model_name} v{self.version}: {metrics}; {verdict}: {self.decision.reason}"

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links mlflow_run_url
        return {"model_name": self.model_name, "version": self.version, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_run_url": self.mlflow_run_url, "promoted": self.decision.promoted,
                "gate_reason": self.decision.reason, "champion_version": self.champion_version,
                "metrics": self.metrics, "champion_metrics": self.champion_metrics}


def compute_metrics(task: str, model: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    from sklearn import metrics

    scores = prediction_metrics(task, y, model.predict(x))
    if task == "regression":
        return scores
    if hasattr(model, "predict_proba") and y.nunique() > 1 and set(y.unique()) <= set(model.classes_):
        proba = model.predict_proba(x)
        scores["roc_auc"] = float(metrics.roc_auc_score(y, proba[:, 1]) if len(model.classes_) == 2 else
                                  metrics.roc_auc_score(y, proba, multi_class="ovr", labels=model.classes_))
    return scores


def prediction_metrics(task: str, y: Any, predicted: Any) -> dict[str, float]:
    """The gate's metrics that need only the predicted values (roc_auc needs the model's probabilities)."""
    from sklearn import metrics

    if task == "regression":
        return {"rmse": float(math.sqrt(metrics.mean_squared_error(y, predicted))),
                "mae": float(metrics.mean_absolute_error(y, predicted)),
                "r2": float(metrics.r2_score(y, predicted))}
    return {"accuracy": float(metrics.accuracy_score(y, predicted)),
            "f1_macro": float(metrics.f1_score(y, predicted, average="macro"))}


def decide(challenger: dict[str, float], champion: dict[str, float] | None, champion_version: str | None,
           promotion: PromotionConfig, force: bool = False) -> GateDecision:
    """Promote when there is no champion, or the challenger beats it by at least the margin.

    A champion that could not be scored (`champion` None or without the metric) is never replaced silently:
    UnscorableChampionError, unless `force`.
    """
    metric = promotion.metric
    if metric not in challenger:
        raise PipelineError(f"promotion metric {metric!r} is undefined on this test set; computed: {list(challenger)}")
    new = challenger[metric]
    old = None if champion is None else champion.get(metric)
    if force:
        return GateDecision(True, "forced promotion", metric, new, old, champion_version)
    if champion_version is None:
        return GateDecision(True, "no champion yet", metric, new, None, None)
    if old is None:
        raise UnscorableChampionError(champion_version, "no scores given" if champion is None
                                      else f"its {metric} is undefined on this test set")
    gain = (new - old) if promotion.higher_is_better else (old - new)
    better = "higher" if promotion.higher_is_better else "lower"
    if gain >= promotion.min_improvement and gain > 0:
        return GateDecision(True, f"better: {metric} {new:.4f} vs champion v{champion_version} {old:.4f} "
                            f"({better} is better, margin {promotion.min_improvement})", metric, new, old,
                            champion_version)
    return GateDecision(False, f"not better: {metric} {new:.4f} vs champion v{champion_version} {old:.4f}; "
                        f"needs to be at least {promotion.min_improvement} {better}", metric, new, old,
                        champion_version)


def contract_differences(champion: Mapping[str, Any] | None, challenger: Mapping[str, Any]) -> list[str]:
    """What differs between two models' feature contracts: task, target, feature names and dtypes. Ranges,
    allowed values and nullability may evolve between versions; these may not."""
    if not champion:
        return ["its MLmodel holds no feature_contract, so nothing shows it is compatible"]
    differences = [f"{key} {champion.get(key)!r} (champion) vs {challenger.get(key)!r} (challenger)"
                   for key in ("task", "target") if champion.get(key) != challenger.get(key)]
    old = {f["name"]: f["dtype"] for f in champion.get("features", [])}
    new = {f["name"]: f["dtype"] for f in challenger.get("features", [])}
    if removed := sorted(old.keys() - new.keys()):
        differences.append(f"features the challenger lacks: {_listed(removed)}")
    if added := sorted(new.keys() - old.keys()):
        differences.append(f"features new in the challenger: {_listed(added)}")
    if changed := [f"{n} {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]:
        differences.append(f"dtypes changed (champion -> challenger): {_listed(changed)}")
    return differences


def _listed(items: list[str], most: int = 10) -> str:
    """A short list: the gate's reason ends up in size-limited MLflow tags (champion_history)."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def stored_contract(model_name: str, version: str) -> dict[str, Any] | None:
    """The feature_contract training stored in a registered version's MLmodel metadata. Only that YAML file is
    downloaded: the model itself is not deserialized (one built for other data need not even load)."""
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="mlmodel-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}/MLmodel",
                                                   dst_path=tmp)
        mlmodel = yaml.safe_load(Path(path).read_text())
    return (mlmodel.get("metadata") or {}).get("feature_contract")


def _score_champion(config: EvaluationConfig, version: str, challenger: str, x: pd.DataFrame,
                    y: pd.Series) -> dict[str, float]:
    """The champion's metrics on this test set, or a ChampionGateError: its contract differs from the
    challenger's (checked before the model is loaded), or it fails to load, predict or yield the gate's metric."""
    name = config.mlflow.registered_model_name
    try:
        contract = stored_contract(name, version)
    except Exception as exc:  # the registry or artifact store failed: nothing to compare against
        raise UnscorableChampionError(version, f"its MLmodel could not be read: {exc}", challenger) from exc
    differences = contract_differences(contract, config.schema.feature_contract())
    if differences:
        raise IncompatibleChampionError(version, differences, challenger)
    try:
        model = registry.load_model(f"models:/{name}/{version}")
        scores = compute_metrics(config.schema.task, model, x, y)
    except Exception as exc:  # whatever the cause, an unscored champion must not be replaced silently
        raise UnscorableChampionError(version, f"{type(exc).__name__}: {exc}", challenger) from exc
    if config.promotion.metric not in scores:
        raise UnscorableChampionError(version, f"its {config.promotion.metric} is undefined on this test set",
                                      challenger)
    return scores


def _log_plots(schema: SchemaConfig, model: Any, x: pd.DataFrame,
               y: pd.Series) -> tuple[dict[str, bytes], dict[str, float]]:
    """Log the residual or confusion-matrix plot and the permutation importance to the active run; return the
    plots as PNG (title -> bytes) and the importance (feature -> mean drop in score) for the model card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import ConfusionMatrixDisplay

    if schema.task == "regression":
        predicted = model.predict(x)
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        left.scatter(y, predicted, s=8, alpha=0.5)
        bounds = [min(y.min(), predicted.min()), max(y.max(), predicted.max())]
        left.plot(bounds, bounds, "k--", lw=1)
        left.set(xlabel=f"actual {schema.target}", ylabel="predicted", title="Predicted vs actual")
        right.scatter(predicted, y - predicted, s=8, alpha=0.5)
        right.axhline(0, color="k", lw=1)
        right.set(xlabel="predicted", ylabel="residual (actual - predicted)", title="Residuals")
        fig.tight_layout()
        mlflow.log_figure(fig, "plots/residuals.png")
        plots = {"Predicted vs actual, and residuals (test set)": _png(fig)}
    else:
        fig, ax = plt.subplots(figsize=(6, 5))
        ConfusionMatrixDisplay.from_estimator(model, x, y, ax=ax, colorbar=False)
        ax.set_title("Confusion matrix (test set)")
        fig.tight_layout()
        mlflow.log_figure(fig, "plots/confusion_matrix.png")
        plots = {"Confusion matrix (test set)": _png(fig)}
    plt.close(fig)

    sample = x.sample(min(len(x), IMPORTANCE_ROWS), random_state=0)
    importance = permutation_importance(model, sample, y.loc[sample.index], n_repeats=5, random_state=0)
    order = np.argsort(importance.importances_mean)[-20:]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(order))))
    ax.barh([x.columns[i] for i in order], importance.importances_mean[order], xerr=importance.importances_std[order])
    ax.set(xlabel="drop in score when shuffled", title="Permutation feature importance (test set)")
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/feature_importance.png")
    plots["Permutation feature importance (test set)"] = _png(fig)
    plt.close(fig)
    importances = {c: float(v) for c, v in zip(x.columns, importance.importances_mean)}
    mlflow.log_dict(importances, "feature_importance.json")
    return plots, importances


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def evaluate(test_frame: pd.DataFrame, config: EvaluationConfig, trained: TrainingResult, output_dir: Path,
             force_promote: bool = False, data: model_card.TrainingData | None = None) -> EvaluationResult:
    """Score the trained model on the test set, register it, let the gate decide, and write its model card
    (`data`: the training snapshot the card names)."""
    import mlflow

    tracking.configure(config.mlflow)
    name = config.mlflow.registered_model_name
    x, y = split_xy(test_frame, config.schema)
    model = registry.load_model(trained.model_uri)
    scores = compute_metrics(config.schema.task, model, x, y)
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()})
        mlflow.log_metric("test_rows", len(x))
        plots, importance = _log_plots(config.schema, model, x, y)

    version = registry.register(name, trained.model_uri, trained.mlflow_run_id)
    current = registry.champion_version(name)
    metric = config.promotion.metric
    client = mlflow.tracking.MlflowClient()
    champion_scores: dict[str, float] | None = scores
    if current == version:
        decision = GateDecision(False, f"v{version} is already the champion", metric,
                                scores[metric], scores[metric], current)
    else:
        try:
            champion_scores = None if current is None else _score_champion(config, current, f"{name} v{version}",
                                                                              x, y)
            decision = decide(scores, champion_scores, current, config.promotion, force_promote)
        except ChampionGateError as refused:
            if not force_promote:  # the alias stays; the version says why it was not weighed
                client.set_model_version_tag(name, version, "gate_decision", f"refused: {refused.problem}")
                raise
            champion_scores = None
            decision = GateDecision(True, f"forced promotion over {refused.problem}", metric, scores[metric], None,
                                    current)
            log.warning("evaluate: %s v%s: %s", name, version, decision.reason)
    # The card is written before the alias moves: a card that fails to render or log promotes nothing.
    card = model_card.build(model_card.CardFacts(
        name, version, trained.mlflow_run_url, trained.family, trained.estimator,
        model.named_steps["model"].get_params(),
        config.schema, data, trained.train_rows, len(x), scores, decision.champion_version,
        champion_scores or {}, metric, decision.promoted, decision.reason, importance, plots), config.card)
    model_card.write(card, output_dir / model_card.ARTIFACT_DIR)
    client.log_artifacts(trained.mlflow_run_id, str(output_dir / model_card.ARTIFACT_DIR), model_card.ARTIFACT_DIR)
    client.update_model_version(name, version, description=card.description)
    if decision.promoted:
        registry.promote(name, version, decision.reason)
    for key, value in scores.items():
        client.set_model_version_tag(name, version, f"test_{key}", f"{value:.6f}")
    client.set_model_version_tag(name, version, "gate_decision", decision.reason)
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.set_tags({"registered_version": version, "gate_promoted": str(decision.promoted),
                         "gate_reason": decision.reason})
    champion = version if decision.promoted or current is None else current
    result = EvaluationResult(name, version, trained.mlflow_run_id, trained.mlflow_run_url, len(x), scores,
                              decision, champion, scores if decision.promoted else champion_scores or {})
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("evaluate: %s", result.summary())
    return result
