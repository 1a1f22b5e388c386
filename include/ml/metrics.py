"""The metrics of held-out data, one set of functions for every place that scores a model: evaluation and the gate
(the test split), tuning (each cross-validation fold) and the monitor (labelled live rows).

Each metric's direction (higher or lower is better) is `include.ml.params_file.METRICS`. Classification metrics that
need the class probabilities are PROBABILITY_METRICS; the others need only the predicted labels. How each is
defined, for two classes and for more:

- accuracy, balanced_accuracy (the mean recall of the classes present), f1_macro (the unweighted mean of the
  classes' F1).
- log_loss: the mean negative log-likelihood of the true class (natural log), over the model's classes.
- brier_score: the mean over rows of half the squared distance between the predicted probabilities and the one-hot
  truth, summed over the classes. Halved, it lies in [0, 1] and for two classes equals the usual binary Brier score
  (the mean squared error of the positive class's probability).
- roc_auc, pr_auc: two classes: the area under the ROC curve, and the average precision (scikit-learn's
  step-wise area under the precision-recall curve), of the positive class, the model's second class in sorted
  order (`classes_[1]`). More classes: the unweighted mean over the classes present in the rows scored of each
  class against the rest (one-vs-rest, macro). They need two classes present among the rows.

A metric that is undefined on the rows given (a label the model never saw, one class only) is left out rather
than reported as NaN, and the gate says so.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

PROBABILITY_METRICS = frozenset({"log_loss", "brier_score", "roc_auc", "pr_auc"})


def compute_metrics(task: str, model: Any, x: Any, y: Any) -> dict[str, float]:
    """Every metric of `task` that is defined for `model` on the rows `x` with true values `y`."""
    scores = prediction_metrics(task, y, model.predict(x))
    if task == "classification" and hasattr(model, "predict_proba"):
        scores |= probability_metrics(y, model.predict_proba(x), model.classes_)
    return scores


def prediction_metrics(task: str, y: Any, predicted: Any) -> dict[str, float]:
    """The metrics that need only the predicted values (what a capture holds even without probabilities)."""
    from sklearn import metrics

    if task == "regression":
        return {"rmse": float(math.sqrt(metrics.mean_squared_error(y, predicted))),
                "mae": float(metrics.mean_absolute_error(y, predicted)),
                "r2": float(metrics.r2_score(y, predicted))}
    return {"accuracy": float(metrics.accuracy_score(y, predicted)),
            "balanced_accuracy": float(metrics.balanced_accuracy_score(y, predicted)),
            "f1_macro": float(metrics.f1_score(y, predicted, average="macro"))}


def probability_metrics(y: Any, probabilities: Any, classes: Sequence[Any]) -> dict[str, float]:
    """log_loss, brier_score, roc_auc and pr_auc of the class probabilities (one column per class of `classes`,
    in that order), each where it is defined (module docstring)."""
    from sklearn import metrics
    from sklearn.preprocessing import label_binarize

    truth, proba, labels = np.asarray(y), np.asarray(probabilities, dtype=np.float64), np.asarray(classes)
    if len(labels) < 2 or len(truth) == 0 or not set(np.unique(truth)) <= set(labels.tolist()):
        return {}
    scores = {"log_loss": float(metrics.log_loss(truth, proba, labels=labels)),
              "brier_score": float(metrics.brier_score_loss(truth, proba, labels=labels, scale_by_half=True))}
    onehot = label_binarize(truth, classes=labels)
    if len(labels) == 2:  # label_binarize gives one column: the positive class
        onehot, proba = onehot[:, 0], proba[:, 1]
    else:
        present = onehot.any(axis=0)
        onehot, proba = onehot[:, present], proba[:, present]
    if len(np.unique(truth)) >= 2:
        scores["roc_auc"] = float(metrics.roc_auc_score(onehot, proba, average="macro"))
        scores["pr_auc"] = float(metrics.average_precision_score(onehot, proba, average="macro"))
    return scores
