"""The metrics every scorer shares (evaluation, the gate, tuning, the monitor): what each classification metric is,
for two classes and for more, and when it is left out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk
from sklearn.linear_model import LogisticRegression

from include.ml.metrics import PROBABILITY_METRICS, compute_metrics, prediction_metrics, probability_metrics
from include.ml.params_file import METRICS
from tests.support.frames import dataset

CLASSIFICATION = {"accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc", "log_loss", "brier_score"}


def fitted(y_of) -> tuple[LogisticRegression, pd.DataFrame, pd.Series]:
    data = dataset("classification", rows=300)
    x, y = data[["x1", "x2"]].fillna(0.0), y_of(data["y"])
    return LogisticRegression().fit(x, y), x, y


def test_every_classification_metric_is_computed_and_has_a_direction() -> None:
    model, x, y = fitted(lambda y: y)
    scores = compute_metrics("classification", model, x, y)
    assert set(scores) == CLASSIFICATION == set(METRICS["classification"])
    assert PROBABILITY_METRICS <= set(scores)
    assert {name for name, higher in METRICS["classification"].items() if not higher} == {"log_loss", "brier_score"}


def test_two_classes_score_the_positive_class_as_scikit_learn_does() -> None:
    model, x, y = fitted(lambda y: y.map({"a": "no", "b": "no", "c": "yes"}))
    positive = model.predict_proba(x)[:, 1]  # classes_ == ["no", "yes"]
    scores = compute_metrics("classification", model, x, y)
    assert scores["brier_score"] == pytest.approx(sk.brier_score_loss(y, positive, pos_label="yes"))
    assert scores["pr_auc"] == pytest.approx(sk.average_precision_score(y, positive, pos_label="yes"))
    assert scores["roc_auc"] == pytest.approx(sk.roc_auc_score(y == "yes", positive))
    assert scores["log_loss"] == pytest.approx(sk.log_loss(y, model.predict_proba(x)))
    assert scores["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, model.predict(x)))


def test_more_classes_halve_the_brier_score_and_average_one_vs_rest() -> None:
    model, x, y = fitted(lambda y: y)
    proba, onehot = model.predict_proba(x), (y.to_numpy()[:, None] == model.classes_).astype(float)
    scores = compute_metrics("classification", model, x, y)
    # Half the summed squared distance to the one-hot truth: [0, 1], like the binary score.
    assert scores["brier_score"] == pytest.approx(((proba - onehot) ** 2).sum(axis=1).mean() / 2)
    assert scores["pr_auc"] == pytest.approx(np.mean([sk.average_precision_score(onehot[:, k], proba[:, k])
                                                      for k in range(3)]))
    assert scores["roc_auc"] == pytest.approx(sk.roc_auc_score(y, proba, multi_class="ovr"))


def test_a_class_absent_from_the_rows_is_left_out_of_the_averages_not_a_nan() -> None:
    model, x, y = fitted(lambda y: y)
    kept = (y != "a").to_numpy()
    scores = probability_metrics(y[kept], model.predict_proba(x[kept]), model.classes_)
    proba = model.predict_proba(x[kept])
    assert scores["pr_auc"] == pytest.approx(np.mean([sk.average_precision_score(y[kept] == c, proba[:, k])
                                                      for k, c in ((1, "b"), (2, "c"))]))
    assert all(np.isfinite(v) for v in scores.values())


def test_undefined_metrics_are_left_out() -> None:
    model, x, y = fitted(lambda y: y)
    proba = model.predict_proba(x)
    only_a = (y == "a").to_numpy()
    one_class = probability_metrics(y[only_a], proba[only_a], model.classes_)
    assert set(one_class) == {"log_loss", "brier_score"}  # no ranking with one class present
    assert probability_metrics(y.replace("a", "new"), proba, model.classes_) == {}  # a label the model never saw
    assert probability_metrics(y[:0], proba[:0], model.classes_) == {}
    assert set(prediction_metrics("classification", y, model.predict(x))) == {"accuracy", "balanced_accuracy",
                                                                              "f1_macro"}
