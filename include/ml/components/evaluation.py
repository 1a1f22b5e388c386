"""Evaluation: held-out metrics, plots, and the champion/challenger gate."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml import artifacts, registry, tracking
from include.ml.components.training import TrainingResult, split_xy
from include.ml.entities import EvaluationConfig, PromotionConfig, SchemaConfig
from include.ml.exceptions import PipelineError

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

    predicted = model.predict(x)
    if task == "regression":
        return {"rmse": float(math.sqrt(metrics.mean_squared_error(y, predicted))),
                "mae": float(metrics.mean_absolute_error(y, predicted)),
                "r2": float(metrics.r2_score(y, predicted))}
    scores = {"accuracy": float(metrics.accuracy_score(y, predicted)),
              "f1_macro": float(metrics.f1_score(y, predicted, average="macro"))}
    if hasattr(model, "predict_proba") and y.nunique() > 1 and set(y.unique()) <= set(model.classes_):
        proba = model.predict_proba(x)
        scores["roc_auc"] = float(metrics.roc_auc_score(y, proba[:, 1]) if len(model.classes_) == 2 else
                                  metrics.roc_auc_score(y, proba, multi_class="ovr", labels=model.classes_))
    return scores


def decide(challenger: dict[str, float], champion: dict[str, float] | None, champion_version: str | None,
           promotion: PromotionConfig, force: bool = False) -> GateDecision:
    """Promote when there is no champion, or the challenger beats it by at least the margin."""
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
        return GateDecision(True, f"champion v{champion_version} could not be scored on this test set",
                            metric, new, None, champion_version)
    gain = (new - old) if promotion.higher_is_better else (old - new)
    better = "higher" if promotion.higher_is_better else "lower"
    if gain >= promotion.min_improvement and gain > 0:
        return GateDecision(True, f"better: {metric} {new:.4f} vs champion v{champion_version} {old:.4f} "
                            f"({better} is better, margin {promotion.min_improvement})", metric, new, old,
                            champion_version)
    return GateDecision(False, f"not better: {metric} {new:.4f} vs champion v{champion_version} {old:.4f}; "
                        f"needs to be at least {promotion.min_improvement} {better}", metric, new, old,
                        champion_version)


def _score_champion(config: EvaluationConfig, version: str, x: pd.DataFrame, y: pd.Series) -> dict[str, float] | None:
    import mlflow

    try:
        model = mlflow.sklearn.load_model(f"models:/{config.mlflow.registered_model_name}/{version}")
        return compute_metrics(config.schema.task, model, x, y)
    except Exception as exc:  # a champion trained on another schema cannot score this data
        log.warning("champion v%s could not be scored: %s", version, exc)
        return None


def _log_plots(schema: SchemaConfig, model: Any, x: pd.DataFrame, y: pd.Series) -> None:
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
    else:
        fig, ax = plt.subplots(figsize=(6, 5))
        ConfusionMatrixDisplay.from_estimator(model, x, y, ax=ax, colorbar=False)
        ax.set_title("Confusion matrix (test set)")
        fig.tight_layout()
        mlflow.log_figure(fig, "plots/confusion_matrix.png")
    plt.close(fig)

    sample = x.sample(min(len(x), IMPORTANCE_ROWS), random_state=0)
    importance = permutation_importance(model, sample, y.loc[sample.index], n_repeats=5, random_state=0)
    order = np.argsort(importance.importances_mean)[-20:]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(order))))
    ax.barh([x.columns[i] for i in order], importance.importances_mean[order], xerr=importance.importances_std[order])
    ax.set(xlabel="drop in score when shuffled", title="Permutation feature importance (test set)")
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/feature_importance.png")
    plt.close(fig)
    mlflow.log_dict({c: float(v) for c, v in zip(x.columns, importance.importances_mean)},
                    "feature_importance.json")


def evaluate(test_frame: pd.DataFrame, config: EvaluationConfig, trained: TrainingResult, output_dir: Path,
             force_promote: bool = False) -> EvaluationResult:
    import mlflow

    tracking.configure(config.mlflow)
    name = config.mlflow.registered_model_name
    x, y = split_xy(test_frame, config.schema)
    model = mlflow.sklearn.load_model(trained.model_uri)
    scores = compute_metrics(config.schema.task, model, x, y)
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()})
        mlflow.log_metric("test_rows", len(x))
        _log_plots(config.schema, model, x, y)

    version = registry.register(name, trained.model_uri, trained.mlflow_run_id)
    current = registry.champion_version(name)
    champion_scores = scores if current in (None, version) else _score_champion(config, current, x, y)
    if current == version:
        metric = config.promotion.metric
        decision = GateDecision(False, f"v{version} is already the champion", metric,
                                scores[metric], scores[metric], current)
    else:
        decision = decide(scores, None if current is None else champion_scores, current, config.promotion,
                          force_promote)
        if decision.promoted:
            registry.promote(name, version, decision.reason)
            champion_scores = scores
    client = mlflow.tracking.MlflowClient()
    for key, value in scores.items():
        client.set_model_version_tag(name, version, f"test_{key}", f"{value:.6f}")
    client.set_model_version_tag(name, version, "gate_decision", decision.reason)
    with mlflow.start_run(run_id=trained.mlflow_run_id):
        mlflow.set_tags({"registered_version": version, "gate_promoted": str(decision.promoted),
                         "gate_reason": decision.reason})
    champion = version if decision.promoted or current is None else current
    result = EvaluationResult(name, version, trained.mlflow_run_id, trained.mlflow_run_url, len(x), scores,
                              decision, champion, champion_scores or {})
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("evaluate: %s", result.summary())
    return result
