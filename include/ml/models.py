"""Model families selectable in params.yaml, the skops types each may need, and what tuning searches."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

# A hyperparameter's search range, written as in params.yaml's tuning.search_space:
# {low, high} (an int range when both are ints; log: true samples on a log scale) or {choices: [...]}.
SearchSpace = Mapping[str, Mapping[str, Any]]

TREES: SearchSpace = {  # random and extra trees
    "n_estimators": {"low": 50, "high": 250, "log": True},
    "max_depth": {"choices": [None, 8, 16]},
    "min_samples_leaf": {"low": 1, "high": 8},
    "max_features": {"low": 0.3, "high": 1.0},
}


# The types outside skops' default allow-list that a calibrated classifier (model.calibration, CalibratedClassifierCV
# with ensemble=False) adds to any family's: the calibrated classifier's holder and the sigmoid calibrator (isotonic
# regression is a public scikit-learn estimator, trusted by default). Plain objects of attributes: building them runs
# no code of the file's.
CALIBRATION_SKOPS_TYPES: tuple[str, ...] = (
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration")


@dataclass(frozen=True)
class ModelFamily:
    regressor: str
    classifier: str
    fixed_classifier_params: tuple[tuple[str, Any], ...] = ()
    # Types outside skops' default allow-list that this family's fitted
    # pipeline contains. MLflow refuses to load a skops model holding any
    # other untrusted type, so an unexpected type fails at logging time.
    skops_trusted_types: tuple[str, ...] = ("numpy.dtype",)
    # The default search space of the tuning stage, and the classifier's when its parameters differ.
    search_space: SearchSpace = field(default_factory=dict)
    classifier_search_space: SearchSpace | None = None

    def estimator_class(self, task: str) -> type:
        module, _, name = (self.regressor if task == "regression" else self.classifier).rpartition(".")
        return getattr(importlib.import_module(module), name)

    def build(self, task: str, random_state: int, hyperparameters: dict[str, Any]) -> Any:
        params: dict[str, Any] = {"random_state": random_state}
        if task == "classification":
            params.update(self.fixed_classifier_params)
        params.update(hyperparameters)
        return self.estimator_class(task)(**params)

    def default_search_space(self, task: str) -> SearchSpace:
        if task == "classification" and self.classifier_search_space is not None:
            return self.classifier_search_space
        return self.search_space


FAMILIES: dict[str, ModelFamily] = {
    # The classic baseline; for classification, logistic regression with an
    # elastic-net penalty (saga is the solver that supports it).
    "elasticnet": ModelFamily(
        "sklearn.linear_model.ElasticNet",
        "sklearn.linear_model.LogisticRegression",
        fixed_classifier_params=(("solver", "saga"), ("l1_ratio", 0.5), ("max_iter", 2000)),
        search_space={"alpha": {"low": 1e-4, "high": 10.0, "log": True}, "l1_ratio": {"low": 0.0, "high": 1.0}},
        classifier_search_space={"C": {"low": 1e-3, "high": 100.0, "log": True},
                                 "l1_ratio": {"low": 0.0, "high": 1.0}},
    ),
    "random_forest": ModelFamily(
        "sklearn.ensemble.RandomForestRegressor",
        "sklearn.ensemble.RandomForestClassifier",
        skops_trusted_types=("numpy.dtype", "sklearn.tree._tree.Tree"),
        search_space=TREES,
    ),
    # Split thresholds drawn at random: often as good as a random forest, and faster to fit.
    "extra_trees": ModelFamily(
        "sklearn.ensemble.ExtraTreesRegressor",
        "sklearn.ensemble.ExtraTreesClassifier",
        skops_trusted_types=("numpy.dtype", "sklearn.tree._tree.Tree"),
        search_space=TREES,
    ),
    "hist_gradient_boosting": ModelFamily(
        "sklearn.ensemble.HistGradientBoostingRegressor",
        "sklearn.ensemble.HistGradientBoostingClassifier",
        skops_trusted_types=(
            "numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "functools.partial", "sklearn.utils.validation.check_array"),  # with categorical splits
        search_space={"learning_rate": {"low": 0.02, "high": 0.3, "log": True},
                      "max_leaf_nodes": {"low": 8, "high": 64, "log": True},
                      "min_samples_leaf": {"low": 5, "high": 50, "log": True},
                      "l2_regularization": {"low": 1e-6, "high": 1.0, "log": True}},
    ),
}
