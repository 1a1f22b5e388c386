"""Model families selectable in params.yaml, and the skops types each may need."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFamily:
    regressor: str
    classifier: str
    fixed_classifier_params: tuple[tuple[str, Any], ...] = ()
    # Types outside skops' default allow-list that this family's fitted
    # pipeline contains. MLflow refuses to load a skops model holding any
    # other untrusted type, so an unexpected type fails at logging time.
    skops_trusted_types: tuple[str, ...] = ("numpy.dtype",)

    def estimator_class(self, task: str) -> type:
        module, _, name = (self.regressor if task == "regression" else self.classifier).rpartition(".")
        return getattr(importlib.import_module(module), name)

    def build(self, task: str, random_state: int, hyperparameters: dict[str, Any]) -> Any:
        params: dict[str, Any] = {"random_state": random_state}
        if task == "classification":
            params.update(self.fixed_classifier_params)
        params.update(hyperparameters)
        return self.estimator_class(task)(**params)


FAMILIES: dict[str, ModelFamily] = {
    # The classic baseline; for classification, logistic regression with an
    # elastic-net penalty (saga is the solver that supports it).
    "elasticnet": ModelFamily(
        "sklearn.linear_model.ElasticNet",
        "sklearn.linear_model.LogisticRegression",
        fixed_classifier_params=(("solver", "saga"), ("l1_ratio", 0.5), ("max_iter", 2000)),
    ),
    "random_forest": ModelFamily(
        "sklearn.ensemble.RandomForestRegressor",
        "sklearn.ensemble.RandomForestClassifier",
        skops_trusted_types=("numpy.dtype", "sklearn.tree._tree.Tree"),
    ),
    "hist_gradient_boosting": ModelFamily(
        "sklearn.ensemble.HistGradientBoostingRegressor",
        "sklearn.ensemble.HistGradientBoostingClassifier",
        skops_trusted_types=(
            "numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"),
    ),
}
