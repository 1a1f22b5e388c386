"""The evaluation's plots of a model on the test set, logged to the active MLflow run under plots/ and returned as PNG
for the model card: predicted vs actual and residuals (regression); the confusion matrix and the reliability diagram
(classification); the permutation feature importance (both). And the explanations' plots (explanation_plots: what
explanations.py logs under explanations/): mean |attribution| per input column, a beeswarm, dependence plots."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from include.ml.schema_file import ColumnSpec, SchemaConfig

IMPORTANCE_ROWS = 2000  # permutation importance on a sample keeps big test sets cheap
RELIABILITY_BINS = 10  # equal-width bins of predicted probability
RELIABILITY_CLASSES = 10  # at most this many classes' curves (the most frequent in the test set)

RESIDUALS = "Predicted vs actual, and residuals (test set)"
CONFUSION = "Confusion matrix (test set)"
RELIABILITY = "Reliability: predicted probability vs observed frequency (test set)"
IMPORTANCE = "Permutation feature importance (test set)"
ATTRIBUTION = "Mean |attribution| per input column (test set)"
BEESWARM = "Attribution of each explained row, per input column (test set)"
DEPENDENCE = "Attribution against the column's value, top columns (test set)"
SHOWN = 20  # input columns in the attribution bar and the beeswarm; category values on a dependence plot's axis


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


def explanation_plots(schema: SchemaConfig, frame: pd.DataFrame, contributions: np.ndarray,
                      mean_abs: dict[str, float], towards: str, top: int) -> dict[str, bytes]:
    """The explanations' plots as PNG (title -> bytes): `contributions` (rows, inputs) of the rows of `frame`, one
    output per row, which add up to `towards`; `mean_abs` largest first."""
    specs = {c.name: c for c in schema.features}
    order = list(mean_abs)
    by_column = {name: contributions[:, i] for i, name in enumerate(frame.columns)}
    values = {name: plotted_values(frame[name], specs[name]) for name in order[:SHOWN]}
    return {ATTRIBUTION: _png(attribution_bar(mean_abs)),
            BEESWARM: _png(beeswarm(order[:SHOWN], by_column, values, towards)),
            DEPENDENCE: _png(dependence(order[:top], by_column, values, towards))}


def attribution_bar(mean_abs: dict[str, float]) -> Any:
    plt = _matplotlib()
    shown = list(mean_abs.items())[:SHOWN][::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(shown))))
    ax.barh([name for name, _ in shown], [value for _, value in shown])
    ax.set(xlabel="mean |attribution| (over the explained rows)", title=ATTRIBUTION)
    fig.tight_layout()
    return fig


def beeswarm(order: list[str], by_column: dict[str, np.ndarray], values: dict[str, tuple[np.ndarray, list[str]]],
             towards: str) -> Any:
    """One row of points per column (the largest mean |attribution| on top): each explained row's attribution,
    spread vertically where they crowd, coloured by the column's value (its rank: low blue, high red; grey:
    missing)."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(8, max(3, 0.45 * len(order))))
    for position, name in enumerate(order[::-1]):
        attribution = by_column[name]
        ranks = pd.Series(values[name][0]).rank(pct=True).to_numpy()
        y = position + _swarm(attribution)
        known = ~np.isnan(ranks)
        ax.scatter(attribution[~known], y[~known], s=6, color="#999999")
        points = ax.scatter(attribution[known], y[known], s=6, c=ranks[known], cmap="coolwarm", vmin=0, vmax=1)
    ax.set_yticks(range(len(order)), order[::-1])
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel=f"attribution (contribution to {towards})", title=BEESWARM)
    if order:
        fig.colorbar(points, ax=ax, ticks=[0, 1], fraction=0.04).ax.set_yticklabels(["low", "high"])
    fig.tight_layout()
    return fig


def dependence(columns: list[str], by_column: dict[str, np.ndarray],
               values: dict[str, tuple[np.ndarray, list[str]]], towards: str) -> Any:
    """For each column, each explained row's attribution against the column's value (a category: its most
    frequent values, jittered; rows with a missing or other value are left out)."""
    plt = _matplotlib()
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(4.5 * max(1, len(columns)), 4), squeeze=False)
    jitter = np.random.default_rng(0)
    for ax, name in zip(axes[0], columns):
        x, labels = values[name]
        known = ~np.isnan(x)
        shown = x[known] + (jitter.uniform(-0.2, 0.2, known.sum()) if labels else 0)
        ax.scatter(shown, by_column[name][known], s=8, alpha=0.6)
        ax.axhline(0, color="k", lw=0.8)
        if labels:
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        left_out = f" ({(~known).sum()} rows not shown)" if (~known).any() else ""
        ax.set(xlabel=f"{name}{left_out}", ylabel=f"attribution (to {towards})", title=name)
    fig.suptitle(DEPENDENCE)
    fig.tight_layout()
    return fig


def plotted_values(series: pd.Series, column: ColumnSpec) -> tuple[np.ndarray, list[str]]:
    """A column's values as numbers to plot, and the labels of a category's positions ([] when the numbers are the
    values): numbers as they are; a datetime in decimal years; an ordinal its position; a category the position of
    its value among the SHOWN most frequent (NaN: missing, or another value)."""
    if column.is_numeric:
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float), []
    if column.dtype == "datetime":
        moments = _moments(series, column.format)
        return ((moments - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=365.2425) + 1970).to_numpy(float), []
    labels = [str(v) for v in column.categories or ()] if column.dtype == "ordinal" else \
        [str(v) for v in series.dropna().astype(str).value_counts().index[:SHOWN]]
    position = {label: float(i) for i, label in enumerate(labels)}
    return series.map(lambda v: position.get(str(v), np.nan) if pd.notna(v) else np.nan).to_numpy(float), labels


def _moments(series: pd.Series, format: str | None) -> pd.Series:
    if format in ("unix", "unix_ms"):
        return pd.to_datetime(pd.to_numeric(series, errors="coerce"), unit="s" if format == "unix" else "ms")
    moments = pd.to_datetime(series, format=format, errors="coerce", utc=True)
    return moments.dt.tz_localize(None)


def _swarm(values: np.ndarray, width: float = 0.4, bins: int = 40) -> np.ndarray:
    """Vertical offsets spreading points that share a bin of `values` side by side, the busiest bin `width` wide."""
    offsets = np.zeros(len(values))
    if len(values) == 0 or np.ptp(values) == 0:
        return offsets
    which = np.minimum(((values - values.min()) / np.ptp(values) * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    for b in np.flatnonzero(counts > 1):
        members = np.flatnonzero(which == b)
        offsets[members] = (np.arange(len(members)) - (len(members) - 1) / 2) * (2 * width / counts.max())
    return offsets


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
