"""The evaluation's plots of a model on the test set, logged to the active MLflow run under plots/ and returned as PNG
for the model card: predicted vs actual and residuals (regression); the confusion matrix and the reliability diagram
(classification); the permutation feature importance (both)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from include.ml.entities import SchemaConfig

IMPORTANCE_ROWS = 2000  # permutation importance on a sample keeps big test sets cheap
RELIABILITY_BINS = 10  # equal-width bins of predicted probability
RELIABILITY_CLASSES = 10  # at most this many classes' curves (the most frequent in the test set)

RESIDUALS = "Predicted vs actual, and residuals (test set)"
CONFUSION = "Confusion matrix (test set)"
RELIABILITY = "Reliability: predicted probability vs observed frequency (test set)"
IMPORTANCE = "Permutation feature importance (test set)"


def log_plots(schema: SchemaConfig, model: Any, x: pd.DataFrame,
              y: pd.Series) -> tuple[dict[str, bytes], dict[str, float]]:
    """Log the task's plots to the active run; return them as PNG (title -> bytes) and the permutation importance
    (feature -> mean drop in score when shuffled)."""
    import mlflow

    _matplotlib()
    figures = [("plots/residuals.png", RESIDUALS, residuals(schema.target, model.predict(x), y))] \
        if schema.task == "regression" else [("plots/confusion_matrix.png", CONFUSION, confusion_matrix(model, x, y))]
    if schema.task == "classification" and hasattr(model, "predict_proba"):
        figures.append(("plots/reliability.png", RELIABILITY, reliability(model.predict_proba(x), model.classes_, y)))
    importances, figure = importance(model, x, y)
    figures.append(("plots/feature_importance.png", IMPORTANCE, figure))
    mlflow.log_dict(importances, "feature_importance.json")
    plots = {}
    for path, title, fig in figures:
        mlflow.log_figure(fig, path)
        plots[title] = _png(fig)
    return plots, importances


def residuals(target: str, predicted: np.ndarray, y: pd.Series) -> Any:
    plt = _matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(y, predicted, s=8, alpha=0.5)
    bounds = [min(y.min(), predicted.min()), max(y.max(), predicted.max())]
    left.plot(bounds, bounds, "k--", lw=1)
    left.set(xlabel=f"actual {target}", ylabel="predicted", title="Predicted vs actual")
    right.scatter(predicted, y - predicted, s=8, alpha=0.5)
    right.axhline(0, color="k", lw=1)
    right.set(xlabel="predicted", ylabel="residual (actual - predicted)", title="Residuals")
    fig.tight_layout()
    return fig


def confusion_matrix(model: Any, x: pd.DataFrame, y: pd.Series) -> Any:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 5))
    ConfusionMatrixDisplay.from_estimator(model, x, y, ax=ax, colorbar=False)
    ax.set_title(CONFUSION)
    fig.tight_layout()
    return fig


def reliability(probabilities: np.ndarray, classes: Any, y: pd.Series) -> Any:
    """The reliability diagram: for each class (two classes: the positive one, `classes[1]`), the observed share of
    rows of that class against the mean predicted probability, in RELIABILITY_BINS equal-width bins (scikit-learn's
    calibration_curve; empty bins are left out). A calibrated model follows the diagonal. Below it, how many rows
    fall in each bin."""
    from sklearn.calibration import calibration_curve

    plt = _matplotlib()
    labels = list(classes)
    shown = [1] if len(labels) == 2 else \
        sorted(np.argsort([-(np.asarray(y) == c).sum() for c in labels], kind="stable")[:RELIABILITY_CLASSES])
    fig, (curve, counts) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, height_ratios=(3, 1))
    curve.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    for index in shown:
        truth = np.asarray(y) == labels[index]
        p = probabilities[:, index]
        if truth.any() and not truth.all():
            observed, predicted = calibration_curve(truth, p, n_bins=RELIABILITY_BINS, strategy="uniform")
            curve.plot(predicted, observed, "o-", ms=4, label=f"class {labels[index]}")
        counts.hist(p, bins=RELIABILITY_BINS, range=(0, 1), histtype="step", lw=1.5)
    more = f", the {len(shown)} most frequent of {len(labels)} classes" if 2 < len(labels) > len(shown) else ""
    curve.set(ylabel="observed frequency", xlim=(0, 1), ylim=(-0.02, 1.02),
              title=f"Reliability (test set{more})")
    curve.legend(loc="upper left", fontsize="small")
    counts.set(xlabel="predicted probability", ylabel="rows")
    fig.tight_layout()
    return fig


def importance(model: Any, x: pd.DataFrame, y: pd.Series) -> tuple[dict[str, float], Any]:
    """Permutation importance on a sample of at most IMPORTANCE_ROWS test rows (the model's own score), and its
    bar chart of the 20 largest."""
    from sklearn.inspection import permutation_importance

    plt = _matplotlib()
    sample = x.sample(min(len(x), IMPORTANCE_ROWS), random_state=0)
    result = permutation_importance(model, sample, y.loc[sample.index], n_repeats=5, random_state=0)
    order = np.argsort(result.importances_mean)[-20:]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(order))))
    ax.barh([x.columns[i] for i in order], result.importances_mean[order], xerr=result.importances_std[order])
    ax.set(xlabel="drop in score when shuffled", title=IMPORTANCE)
    fig.tight_layout()
    return {c: float(v) for c, v in zip(x.columns, result.importances_mean)}, fig


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _matplotlib()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
