"""Why a model predicts what it does: each input column's additive contribution to one prediction.

Tree families (random and extra trees, histogram gradient boosting) are explained by TreeSHAP, the `shap`
package's TreeExplainer on the fitted estimator (path-dependent: the training cover of each node is the background,
so nothing but the bundle is needed). The linear family's attribution is exact: each model input's coefficient
times its value, against the all-zero input (a standardised column's zero is its training mean).

The estimator sees the preprocessing's outputs (one-hot columns, a datetime's derived parts, encoded categories);
their attributions are summed back to the input column each came from, so a client reads contributions under the
names it sent. For every row and output, base_value + sum(contributions) is the model's output in `output`'s space:
the prediction (regression), the class probability (forests) or the log-odds (gradient boosting and logistic
regression; per class logits with more than two classes). A calibrated classifier is explained before its
calibration (`calibrated`: the identity holds for its classifier's output, which calibration maps monotonically).

Shared by the prediction server (POST /explain) and batch scoring (main.py predict --explain), so both answer alike.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

VALUE, PROBABILITY, LOG_ODDS = "value", "probability", "log_odds"
TREE_SHAP, LINEAR = "tree_shap", "linear"
FORESTS = frozenset({"RandomForestRegressor", "RandomForestClassifier", "ExtraTreesRegressor",
                     "ExtraTreesClassifier"})
BOOSTING = frozenset({"HistGradientBoostingRegressor", "HistGradientBoostingClassifier"})
LINEAR_MODELS = frozenset({"ElasticNet", "LogisticRegression"})


class ExplainError(Exception):
    """The model cannot be explained (a family or preprocessing step this module does not know)."""


@dataclass(frozen=True)
class Explanations:
    inputs: tuple[str, ...]  # the input columns, in the contract's order
    output: str  # VALUE | PROBABILITY | LOG_ODDS
    calibrated: bool  # the explained output is a calibrated classifier's before calibration
    classes: tuple[str, ...]  # the class of each output ((): regression; binary log-odds: the positive class)
    base_values: np.ndarray  # (outputs,)
    contributions: np.ndarray  # (rows, outputs, inputs)

    @property
    def values(self) -> np.ndarray:
        """(rows, outputs): what each row's contributions add up to, from the base value."""
        return self.base_values[None, :] + self.contributions.sum(axis=-1)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON object per row: {"base_value": b, "contributions": {column: v}}; for a classifier both are keyed
        by class first."""
        base = [float(b) for b in self.base_values]
        if not self.classes:
            return [{"base_value": base[0], "contributions": dict(zip(self.inputs, row[0].tolist()))}
                    for row in self.contributions]
        return [{"base_value": dict(zip(self.classes, base)),
                 "contributions": {c: dict(zip(self.inputs, out.tolist())) for c, out in zip(self.classes, row)}}
                for row in self.contributions]

    def mean_abs(self) -> dict[str, float]:
        """Each input column's mean |contribution| over the rows and outputs: what drives the model on these rows."""
        if not len(self.contributions):
            return dict.fromkeys(self.inputs, 0.0)
        return dict(zip(self.inputs, np.abs(self.contributions).mean(axis=(0, 1)).tolist()))

    def for_class(self, labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(base (rows,), contributions (rows, inputs)) of one output per row: the row's label's (a classifier with an
        output per class), else the only one (regression, binary log-odds: the positive class)."""
        n = len(self.contributions)
        if self.contributions.shape[1] == 1:
            return np.repeat(self.base_values[0], n), self.contributions[:, 0, :]
        position = {c: i for i, c in enumerate(self.classes)}
        picked = np.array([position[str(label)] for label in labels], dtype=np.intp)
        return self.base_values[picked], self.contributions[np.arange(n), picked, :]


@dataclass(frozen=True)
class Plan:
    """How a fitted pipeline is explained, read off it without building anything (an explainer copies every tree)."""

    method: str  # TREE_SHAP | LINEAR
    output: str  # VALUE | PROBABILITY | LOG_ODDS
    calibrated: bool
    classes: tuple[str, ...]  # the class of each output ((): regression; binary log-odds: the positive class)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "output": self.output, "calibrated": self.calibrated,
                "classes": list(self.classes)}


def plan(pipeline: Any) -> Plan:
    """The Plan of a fitted `preprocess` + `model` pipeline; raises ExplainError for one it cannot explain."""
    _, calibrated, model, classes = _parts(pipeline)
    kind = type(model).__name__
    if kind not in LINEAR_MODELS | FORESTS | BOOSTING:
        raise ExplainError(f"no explainer for a {kind} model (families: forests, histogram gradient boosting, "
                           "elastic net / logistic regression)")
    output = VALUE if not classes else PROBABILITY if kind in FORESTS else LOG_ODDS
    return Plan(LINEAR if kind in LINEAR_MODELS else TREE_SHAP, output, calibrated,
                classes[-1:] if output == LOG_ODDS and len(classes) == 2 else classes)


def _parts(pipeline: Any) -> tuple[Any, bool, Any, tuple[str, ...]]:
    """(preprocessing, calibrated, the estimator explained, the classes)."""
    steps = getattr(pipeline, "named_steps", None)
    if not steps or "preprocess" not in steps or "model" not in steps:
        raise ExplainError("only a pipeline of a `preprocess` and a `model` step can be explained")
    step = steps["model"]
    calibrated = type(step).__name__ == "CalibratedClassifierCV"
    model = step.calibrated_classifiers_[0].estimator if calibrated else step
    return steps["preprocess"], calibrated, model, tuple(str(c) for c in getattr(step, "classes_", ()))


class Explainer:
    """Built once per loaded model; explain() is safe from many threads."""

    def __init__(self, pipeline: Any, inputs: tuple[str, ...]) -> None:
        self.plan = plan(pipeline)
        self._preprocess, _, model, _ = _parts(pipeline)
        self.inputs, self.method, self.output = inputs, self.plan.method, self.plan.output
        self.calibrated, self.classes = self.plan.calibrated, self.plan.classes
        self._grouping = _grouping(self._preprocess, inputs)
        self._attribute = _Linear(model) if self.method == LINEAR else _Trees(model, type(model).__name__ in BOOSTING)
        if len(self._attribute.base_values) != len(self.classes or ("",)):
            raise ExplainError(f"{len(self._attribute.base_values)} explained outputs for classes {self.classes}")

    def explain_frame(self, frame: Any) -> Explanations:
        """Explain the rows of a pandas frame holding (at least) the input columns, as the pipeline takes them."""
        encoded = self._preprocess.transform(frame)
        encoded = np.asarray(encoded.toarray() if hasattr(encoded, "toarray") else encoded, dtype=np.float64)
        per_feature = self._attribute(encoded)  # (rows, outputs, model inputs)
        return Explanations(self.inputs, self.output, self.calibrated, self.classes,
                            self._attribute.base_values, per_feature @ self._grouping)

    def explain(self, columns: dict[str, np.ndarray]) -> Explanations:
        """Explain validated columns (serving.inputs.validate(...).columns, as LoadedModel.predict takes them)."""
        from serving.engine import model_frame

        return self.explain_frame(model_frame(columns))

    def describe(self) -> dict[str, Any]:
        return {"available": True, **self.plan.describe()}


def build_explainer(pipeline: Any, contract: Any = None) -> Explainer:
    """The explainer of a fitted pipeline; its contributions are keyed by `contract`'s feature names (or the input
    columns the pipeline was fitted on). Raises ExplainError."""
    names = getattr(contract, "names", None)
    if names is None:
        names = contract if contract is not None else getattr(pipeline[0], "feature_names_in_", None)
    if names is None:
        raise ExplainError("the pipeline does not name its input columns")
    return Explainer(pipeline, tuple(str(n) for n in names))


def frame_columns(frame: Any, contract: Any) -> dict[str, np.ndarray]:
    """A frame's input columns (`contract`'s features, or a sequence of names) as Explainer.explain takes them."""
    return {name: frame[name].to_numpy() for name in getattr(contract, "names", contract)}


def _grouping(preprocess: Any, inputs: tuple[str, ...]) -> np.ndarray:
    """(model inputs, inputs): 1 where a model input derives from an input column (a ColumnTransformer branch of one
    column: all its outputs; a branch of several: one output per column, named after it)."""
    if not hasattr(preprocess, "output_indices_"):
        raise ExplainError(f"cannot trace a {type(preprocess).__name__}'s outputs back to its input columns")
    position = {name: i for i, name in enumerate(inputs)}
    width = max((s.stop for s in preprocess.output_indices_.values()), default=0)
    grouping = np.zeros((width, len(inputs)))
    for name, branch, columns in preprocess.transformers_:
        outputs = preprocess.output_indices_[name]
        if branch == "drop" or outputs.stop == outputs.start:
            continue
        columns = [str(c) for c in columns]
        if len(columns) == 1:
            owners = columns * (outputs.stop - outputs.start)
        else:
            owners = [str(n) for n in preprocess.get_feature_names_out()[outputs]]
        for index, owner in zip(range(outputs.start, outputs.stop), owners):
            if owner not in position:
                raise ExplainError(f"model input {index} ({owner!r}) comes from no input column")
            grouping[index, position[owner]] = 1.0
    return grouping


class _Linear:
    """Exact attribution of a linear model: coefficient x value, from the intercept (the output at all zeros)."""

    def __init__(self, model: Any) -> None:
        self._coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))  # (outputs, model inputs)
        self.base_values = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))

    def __call__(self, encoded: np.ndarray) -> np.ndarray:
        return encoded[:, None, :] * self._coef[None, :, :]


class _Trees:
    """TreeSHAP (shap's TreeExplainer). Gradient boosting's categorical splits test a bitset shap does not read, so
    each categorical node's threshold is set, per group of rows taking the same branches there, to send that group
    the way the model does (exact: path-dependent TreeSHAP only follows the explained row's branches)."""

    def __init__(self, model: Any, boosting: bool) -> None:
        import shap

        self._shap = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        self.base_values = np.atleast_1d(np.asarray(self._shap.expected_value, dtype=np.float64)).ravel()
        self._splits = _CategoricalSplits(model) if boosting else None
        self._lock = threading.Lock()  # the categorical thresholds are set per group: one explanation at a time

    def __call__(self, encoded: np.ndarray) -> np.ndarray:
        if self._splits is None or not len(self._splits.nodes):
            return self._shaped(self._shap.shap_values(encoded, check_additivity=False))
        out = np.empty((len(encoded), len(self.base_values), encoded.shape[1]))
        patterns, group = np.unique(self._splits.left(encoded), axis=0, return_inverse=True)
        thresholds = self._shap.model.thresholds
        with self._lock:
            for g, pattern in enumerate(patterns):
                thresholds[self._splits.trees, self._splits.nodes] = np.where(pattern, np.inf, -np.inf)
                rows = group.ravel() == g
                out[rows] = self._shaped(self._shap.shap_values(encoded[rows], check_additivity=False))
        return out

    @staticmethod
    def _shaped(values: Any) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return values[:, None, :] if values.ndim == 2 else values.transpose(0, 2, 1)


class _CategoricalSplits:
    """Where a fitted HistGradientBoosting model splits on a category bitset, and which way each row goes there."""

    def __init__(self, model: Any) -> None:
        per_iteration = len(model._predictors[0])
        trees, nodes, features, bitsets, default_left = [], [], [], [], []
        for t, predictor in enumerate(p for iteration in model._predictors for p in iteration[:per_iteration]):
            table = predictor.nodes
            at = np.flatnonzero(table["is_categorical"] & ~table["is_leaf"].astype(bool))
            trees += [t] * len(at)
            nodes += at.tolist()
            features += table["feature_idx"][at].tolist()
            bitsets.append(predictor.raw_left_cat_bitsets[table["bitset_idx"][at]])
            default_left += table["missing_go_to_left"][at].astype(bool).tolist()
        self.trees, self.nodes = np.array(trees, dtype=np.intp), np.array(nodes, dtype=np.intp)
        self._features = np.array(features, dtype=np.intp)
        self._bitsets = np.concatenate(bitsets) if bitsets else np.zeros((0, 8), dtype=np.uint32)
        self._default_left = np.array(default_left, dtype=bool)
        known, index = model._bin_mapper.make_known_categories_bitsets() if nodes else (None, None)
        self._known, self._known_index = known, index

    def left(self, encoded: np.ndarray) -> np.ndarray:
        """(rows, categorical nodes): whether the model sends the row left there (a missing, negative or unknown
        category goes the node's missing-value way, as scikit-learn's predictor does)."""
        values = encoded[:, self._features]
        usable = ~np.isnan(values) & (values >= 0)
        codes = np.where(usable, values, 0).astype(np.int64) & 0xFF  # the predictor reads a category as a uint8
        word, bit = codes >> 5, (codes & 31).astype(np.uint32)
        n = np.arange(len(self._features))
        in_left = (self._bitsets[n, word] >> bit) & 1 == 1
        known = (self._known[self._known_index[self._features], word] >> bit) & 1 == 1
        return np.where(usable & (in_left | known), in_left, self._default_left)
