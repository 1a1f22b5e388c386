"""The compiled predictor: a bundle's sklearn pipeline as an ONNX Runtime session, served only if it answers as sklearn.

skl2onnx converts the pipeline in double precision (the inputs sklearn receives: float64 numbers, text categories,
a datetime as seconds since 1970 in UTC), with converters of our own where its defaults would change the answers,
it has none, or ONNX Runtime cannot run them:

- SimpleImputer: the fill values as double constants (skl2onnx's Imputer node holds float32 and ORT runs it in
  float only), and a missing category (None, NaN to sklearn) as a text marker no client can send.
- OrdinalEncoder, TargetEncoder, OneHotEncoder: per column, a LabelEncoder from the category's text to its row and a
  lookup of what the fitted encoder itself outputs for that category, for a missing value and for a value it never
  saw (unknown codes, the target mean, an infrequent bucket: the encoder's own answers); a one-hot block as each
  category's column number.
- DatetimeFeatures (serving/features.py): the parts by whole-number arithmetic on the seconds (the calendar by
  Howard Hinnant's days-to-civil algorithm), exact in double; a cyclical part's sine and cosine from a table of the
  transformer's own values.
- Tree ensembles (random forest, extra trees, histogram gradient boosting): the ai.onnx.ml opset-5 `TreeEnsemble`
  node in double (the opset-3 nodes skl2onnx writes keep float32 leaves and sums, ~3e-6 off for 100 trees). A
  forest compares float32-cast features with double thresholds, as sklearn's trees do (they cast X to float32);
  leaves add up in double. Histogram gradient boosting compares float64 features, as sklearn does; its native
  categorical splits become set-membership (BRANCH_MEMBER) nodes. Asked for raw scores (by the calibration below), a
  boosted classifier gives its decision function instead of probabilities.
- CalibratedClassifierCV (model.calibration, one calibrated classifier): the classifier's probabilities or decision
  function, each class's sigmoid or isotonic calibrator, sklearn's normalisation. skl2onnx's converter maps an
  isotonic calibrator's input to the nearest threshold; sklearn (scipy) interpolates between thresholds.

`compile_predictor` then predicts the self-check rows and generated edge rows (each numeric and datetime feature at
its min, max and quantiles of its range, each category and ordinal value, an open category's known values and one
never seen, missing values where nullable) with both and keeps the session only if regression answers agree within
1e-9 relative (absolute below 1) and classifications have the same labels and probabilities within 1e-6. Otherwise,
or if anything in conversion fails, sklearn serves and `Engine.reason` says why. The estimator itself is never
changed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.contract import Contract

log = logging.getLogger(__name__)

ONNX = "onnxruntime"
SKLEARN = "sklearn"
MISSING_CATEGORY = "\x00missing"  # what a missing category becomes: validation never lets a NUL through
# What a number given for an open category becomes: the model's categories are all text (convert refuses others),
# so to sklearn a number is a value it never saw; this marker is one too.
NOT_TEXT = "\x00not text"
NUMERIC_INPUT = "numeric_features"  # not a valid skl2onnx name for a feature (they keep their spaces as "_")
REGRESSION_RTOL = 1e-9
PROBABILITY_ATOL = 1e-6
_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
_KNOWN_VALUES = 50  # an open category's values the edge rows try
_OPSETS = {"": 21, "ai.onnx.ml": 3}  # skl2onnx writes up to 3; the graph is then raised to 5 (TreeEnsemble)


@dataclass(frozen=True)
class Engine:
    """What serves a model, and why not ONNX Runtime when it does not."""

    name: str
    reason: str | None = None


class DisagreementError(Exception):
    """The compiled predictor answers differently from the sklearn pipeline on some checked row."""


def model_frame(columns: dict[str, np.ndarray]) -> Any:
    """Validated columns as the frame the sklearn pipeline is given: a missing category or ordinal (None to
    validation) as NaN, as pandas reads it from the training CSV, so every encoder treats it as in training
    (TargetEncoder, for one, takes None for a value it never saw but NaN for the missing category it learnt)."""
    import pandas as pd

    arrays = {name: np.asarray(values) for name, values in columns.items()}
    return pd.DataFrame({name: _nan_for_none(values) if values.dtype == object else values
                         for name, values in arrays.items()}, copy=False)


def _nan_for_none(values: np.ndarray) -> np.ndarray:
    missing = np.equal(values, None)
    if not missing.any():
        return values
    values = values.copy()
    values[missing] = np.nan
    return values


def _double_input(feature: Any) -> bool:
    """A feature the graph takes as a double: a number, or a datetime as seconds since 1970 (UTC)."""
    return feature.is_numeric or feature.dtype == "datetime"


def epoch_seconds(moments: np.ndarray) -> np.ndarray:
    """datetime64 values as whole seconds since 1970-01-01 (floored, as the datetime's parts are), NaN for NaT."""
    ns = moments.astype("datetime64[ns]").view(np.int64)
    return np.where(np.isnat(moments), np.nan, np.floor_divide(ns, 1_000_000_000).astype(np.float64))


class OnnxPredictor:
    """An ONNX Runtime session with the pipeline's inputs: the numeric and datetime features as one [n, k] double
    tensor in contract order (NUMERIC_INPUT; a datetime as seconds since 1970), each text feature as an [n, 1]
    tensor of its own."""

    def __init__(self, model_bytes: bytes, contract: Contract, classes: list[Any] | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Parallelism comes from gunicorn workers and micro-batching; a thread pool per session only contends.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        # One RunOptions for every call (Run only reads it): without one, each call builds a default (~5 µs).
        self.run_options = ort.RunOptions()
        self.numeric = [f.name for f in contract.features if _double_input(f)]
        self.datetimes = {f.name: f.format for f in contract.features if f.dtype == "datetime"}
        # skl2onnx makes names valid identifiers ("fixed acidity" -> "fixed_acidity"); inputs keep their order.
        text_inputs = [i.name for i in self.session.get_inputs() if i.name != NUMERIC_INPUT]
        self.text = list(zip([f.name for f in contract.features if not _double_input(f)], text_inputs))
        self.classes = classes
        self.outputs = [o.name for o in self.session.get_outputs()][:1 if classes is None else 2]

    def predict(self, columns: dict[str, np.ndarray],
                numeric: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`numeric`: the numeric columns as one [n, k] array, when the caller has them so (inputs.Batch). A datetime
        column is datetime64 (validation's) or the values a file holds (batch scoring's)."""
        feeds = {}
        if self.numeric:
            if numeric is None or self.datetimes:  # validation's array holds the numbers only
                numeric = np.column_stack([epoch_seconds(self._moments(name, columns[name])) if name in self.datetimes
                                           else np.asarray(columns[name], dtype=np.float64) for name in self.numeric])
            feeds[NUMERIC_INPUT] = np.ascontiguousarray(numeric, dtype=np.float64)
        for name, onnx_name in self.text:
            values = [v if type(v) is str else MISSING_CATEGORY if v is None or v != v else NOT_TEXT
                      for v in columns[name]]
            feeds[onnx_name] = np.array(values, dtype=object).reshape(-1, 1)
        out = self.session.run(self.outputs, feeds, self.run_options)
        if self.classes is None:
            return out[0].reshape(-1), None
        return out[0].reshape(-1), out[1]

    def _moments(self, name: str, values: np.ndarray) -> np.ndarray:
        """A datetime column as datetime64: validation's as it is, batch scoring's text (or unix numbers) parsed as
        everywhere else."""
        if values.dtype.kind == "M":
            return values
        from serving.features import parse_datetimes

        return parse_datetimes(values, self.datetimes[name])[0]


def compile_predictor(estimator: Any, contract: Contract, check_rows: list[dict[str, Any]],
                      sklearn_predict: Any) -> tuple[OnnxPredictor | None, Engine]:
    """The ONNX Runtime predictor for `estimator` if it agrees with `sklearn_predict(columns)` -> (values,
    probabilities) on check_rows plus generated edge rows; else None and the reason."""
    try:
        predictor = OnnxPredictor(convert(estimator, contract), contract, _classes(estimator, contract))
        compare(predictor, sklearn_predict, contract,
                check_rows + edge_rows(contract, check_rows, known_categories(estimator)))
    except Exception as exc:  # noqa: BLE001 - whatever fails here, sklearn serves and the reason is shown
        return None, Engine(SKLEARN, _reason(exc))
    return predictor, Engine(ONNX)


def convert(estimator: Any, contract: Contract) -> bytes:
    """The pipeline as a serialized ONNX model: the numeric and datetime features as one input, each text feature
    as one."""
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    for feature in contract.features:
        if not feature.is_numeric and feature.allowed and not all(isinstance(a, str) for a in feature.allowed):
            raise TypeError(f"categorical feature {feature.name!r} has non-text values {list(feature.allowed)[:5]}")
    inputs = [(f.name, DoubleTensorType([None, 1]) if _double_input(f) else StringTensorType([None, 1]))
              for f in contract.features]
    onx = to_onnx(estimator, inputs, classifier=contract.task == "classification")
    _one_numeric_input(onx.graph, sum(_double_input(f) for f in contract.features))
    return onx.SerializeToString()


def to_onnx(model: Any, inputs: list[tuple[str, Any]], classifier: bool = False) -> Any:
    """A fitted pipeline or transformer as an ONNX model (ModelProto), with our converters: `inputs` are skl2onnx's
    (name, tensor type) pairs, a datetime as a double of seconds since 1970."""
    from skl2onnx import convert_sklearn
    from sklearn import ensemble
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, TargetEncoder

    from serving.features import DatetimeFeatures

    forests = (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier, ensemble.HistGradientBoostingClassifier)
    trees = {cls: _convert_trees for cls in (*forests, ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor,
                                             ensemble.HistGradientBoostingRegressor)}
    encoders = {cls: _convert_lookup for cls in (OrdinalEncoder, TargetEncoder, OneHotEncoder)}
    shapes = {**{cls: _double_probabilities for cls in (*forests, CalibratedClassifierCV)},
              SimpleImputer: _same_type_shape,
              **{cls: _width_shape for cls in (OrdinalEncoder, TargetEncoder, OneHotEncoder, DatetimeFeatures)}}
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if classifier else None
    onx = convert_sklearn(model, initial_types=inputs, target_opset=_OPSETS, options=options,
                          custom_conversion_functions={SimpleImputer: _convert_imputer, **trees, **encoders,
                                                       DatetimeFeatures: _convert_datetime,
                                                       CalibratedClassifierCV: _convert_calibrated},
                          custom_shape_calculators=shapes)
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            # TreeEnsemble needs 5. The other ai.onnx.ml ops skl2onnx writes mean the same at 5; the agreement
            # check would catch one that did not.
            opset.version = 5
    return onx


def _one_numeric_input(graph: Any, features: int) -> None:
    """Feed the numeric features as one [n, k] tensor, split back into skl2onnx's per-feature inputs: a session
    run costs per input (one row of the default forest: 23 -> 11 µs with 11 features). skl2onnx's first step is
    usually a Concat of exactly those inputs, which then goes (its output is the new input itself)."""
    from onnx import TensorProto, helper

    numeric = [i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.DOUBLE]
    if not numeric:
        return
    if len(numeric) != features:
        raise ValueError(f"the converted model has {len(numeric)} numeric inputs for {features} numeric features")
    for node in list(graph.node):
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if node.op_type == "Concat" and list(node.input) == numeric and axis in (1, -1) \
                and node.output[0] not in {output.name for output in graph.output}:
            graph.node.remove(node)
            for other in graph.node:
                other.input[:] = [NUMERIC_INPUT if x == node.output[0] else x for x in other.input]
    if any(x in numeric for node in graph.node for x in node.input):
        graph.node.insert(0, helper.make_node("Split", [NUMERIC_INPUT], numeric, axis=1, num_outputs=len(numeric)))
    kept = [i for i in graph.input if i.name not in numeric]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.DOUBLE, [None, len(numeric)]),
                        *kept])


def compare(predictor: OnnxPredictor, sklearn_predict: Any, contract: Contract, rows: list[dict[str, Any]]) -> None:
    """Raise DisagreementError unless the predictor answers `rows` as sklearn does (the tolerances above)."""
    from serving.inputs import validate

    batch = validate(rows, contract, max_rows=len(rows), out_of_range="flag")
    columns = batch.columns
    got, got_proba = predictor.predict(columns, batch.numeric)
    expected, expected_proba = sklearn_predict(columns)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        raise DisagreementError(f"{got.shape[0]} answers for {expected.shape[0]} rows")
    if contract.task == "regression":
        got = got.astype(np.float64)
        off = np.abs(got - expected) > REGRESSION_RTOL * np.maximum(np.abs(expected), 1.0)
        if off.any():
            i = int(off.argmax())
            raise DisagreementError(f"{int(off.sum())} of {len(rows)} rows differ beyond {REGRESSION_RTOL:g} "
                                    f"relative; row {i}: {got[i]!r} vs sklearn {expected[i]!r}")
        return
    labels = got.tolist() != expected.tolist()
    if labels:
        i = next(i for i, (a, b) in enumerate(zip(got.tolist(), expected.tolist())) if a != b)
        raise DisagreementError(f"labels differ; row {i}: {got[i]!r} vs sklearn {expected[i]!r}")
    if expected_proba is not None:
        gap = float(np.max(np.abs(np.asarray(got_proba, dtype=np.float64) - expected_proba)))
        if not gap <= PROBABILITY_ATOL:
            raise DisagreementError(f"probabilities differ by {gap:.3g} (> {PROBABILITY_ATOL:g})")


def edge_rows(contract: Contract, base_rows: list[dict[str, Any]],
              known: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """The first base row (or the contract's example) varied one feature at a time: each numeric and datetime
    feature at the quantiles of its range, each category and ordinal value, an open category's `known` values (what
    the model saw) and one it never saw, a missing value where nullable; then every such value in one row."""
    base = dict(base_rows[0]) if base_rows else contract.example_row()
    rows, mixed = [], []
    for feature in contract.features:
        values: list[Any] = []
        if feature.is_numeric:
            lo = feature.min if feature.min is not None else -1e6
            hi = feature.max if feature.max is not None else 1e6
            values = [lo + q * (hi - lo) for q in _QUANTILES]
            values = [round(v) for v in values] if feature.dtype == "int" else values
        elif feature.dtype == "datetime":
            start, end = feature.datetime_span()
            seconds = (end - start).astype(np.int64)
            values = [feature.datetime_value(start + np.timedelta64(int(q * seconds), "s")) for q in _QUANTILES]
        elif feature.allowed:
            values = list(feature.allowed)
        else:  # an open category: values the model knows, and one it never saw
            values = [*(known or {}).get(feature.name, [])[:_KNOWN_VALUES], "\x01never seen"]
        if feature.nullable:
            values.append(None)
        rows += [{**base, feature.name: v} for v in values]
        mixed.append(values)
    # Rows where every feature moves at once, cycling through the values above.
    for i in range(max((len(v) for v in mixed), default=0)):
        row = dict(base)
        for feature, values in zip(contract.features, mixed):
            if values:
                row[feature.name] = values[i % len(values)]
        rows.append(row)
    return rows


def known_categories(estimator: Any) -> dict[str, list[Any]]:
    """Each text column's categories as the pipeline's encoders learnt them (for the edge rows to try)."""
    from sklearn.compose import ColumnTransformer

    known: dict[str, list[Any]] = {}
    steps = getattr(estimator, "steps", [])
    transformer = steps[0][1] if steps else None
    if not isinstance(transformer, ColumnTransformer):
        return known
    for _, branch, columns in transformer.transformers_:
        last = branch.steps[-1][1] if hasattr(branch, "steps") else branch
        for column, categories in zip(columns, getattr(last, "categories_", [])):
            known[str(column)] = [c for c in categories.tolist() if isinstance(c, str)]
    return known


def _classes(estimator: Any, contract: Contract) -> list[Any] | None:
    return estimator.classes_.tolist() if contract.task == "classification" else None


def _reason(exc: Exception) -> str:
    """Why a pipeline is not served by ONNX Runtime, in a line: a step skl2onnx has no converter for is named."""
    text = str(exc)
    if type(exc).__name__ in ("MissingShapeCalculator", "MissingConverter"):
        step = re.search(r"for type '<class '([^']+)'>'", text)
        return f"no ONNX converter for the pipeline step {step.group(1) if step else '?'}"
    return f"{type(exc).__name__}: {_short(text)}"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- skl2onnx converters (called by to_onnx with its scope, operator and container) ---------------------------------

def _double_probabilities(operator: Any) -> None:
    """skl2onnx's parser may declare a tree classifier's probabilities float, and a calibrated classifier's when its
    input is float (an OrdinalEncoder's codes); ours are double, like the features."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    calculate_linear_classifier_output_shapes(operator)
    operator.outputs[1].type = DoubleTensorType(shape=operator.outputs[1].type.shape)


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer as Where(missing, fill, x): doubles stay doubles; a missing category is MISSING_CATEGORY."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import StringTensorType
    from skl2onnx.operator_converters.common import concatenate_variables

    imputer = operator.raw_operator
    missing = imputer.missing_values
    if imputer.add_indicator or not (missing is None or (isinstance(missing, float) and np.isnan(missing))):
        raise NotImplementedError(f"SimpleImputer(missing_values={missing!r}, add_indicator="
                                  f"{imputer.add_indicator}) is not converted")
    x = concatenate_variables(scope, operator.inputs, container)
    fill, mask = scope.get_unique_variable_name("fill"), scope.get_unique_variable_name("missing")
    statistics = imputer.statistics_
    if isinstance(operator.inputs[0].type, StringTensorType):
        marker = scope.get_unique_variable_name("marker")
        container.add_initializer(marker, TensorProto.STRING, [1], [MISSING_CATEGORY.encode()])
        container.add_initializer(fill, TensorProto.STRING, [1, len(statistics)], [str(s).encode() for s in statistics])
        container.add_node("Equal", [x, marker], [mask])
    else:
        container.add_initializer(fill, TensorProto.DOUBLE, [1, len(statistics)], statistics.astype(np.float64))
        container.add_node("IsNaN", [x], [mask])
    container.add_node("Where", [mask, fill, x], [operator.outputs[0].full_name])


@dataclass
class _Tree:
    """One tree as arrays: interior and leaf nodes share one index space; leaf i contributes value[i] (per target)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray  # [nodes, targets]
    # a categorical split's input values that go left (None: a numeric split, x <= threshold goes left)
    members: list[list[float] | None] | None = None


def _sklearn_trees(model: Any) -> tuple[list[_Tree], np.ndarray, bool, str]:
    """The model's trees (each target's trees for a multi-class forest), the base value per target, whether
    features are cast to float32 first, and how the summed leaves become the output."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if isinstance(model, (HistGradientBoostingRegressor, HistGradientBoostingClassifier)):
        if isinstance(model, HistGradientBoostingRegressor) and model.loss not in ("squared_error", "absolute_error",
                                                                                   "quantile"):
            raise NotImplementedError(f"HistGradientBoostingRegressor(loss={model.loss!r}) has a non-identity link")
        column, members_of = _hgb_inputs(model)
        trees = []
        for iteration in model._predictors:
            for target, predictor in enumerate(iteration):
                nodes = predictor.nodes
                value = np.zeros((len(nodes), len(iteration)))
                value[:, target] = nodes["value"]
                members = [members_of(node, predictor) if node["is_categorical"] and not node["is_leaf"] else None
                           for node in nodes]
                trees.append(_Tree(column[nodes["feature_idx"]], nodes["num_threshold"],
                                   nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                                   nodes["is_leaf"].astype(bool), nodes["missing_go_to_left"].astype(bool), value,
                                   members if nodes["is_categorical"].any() else None))
        base = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
        if isinstance(model, HistGradientBoostingRegressor):
            return trees, base, False, "identity"
        return trees, base, False, "sigmoid" if len(model.classes_) == 2 else "softmax"
    if getattr(model, "n_outputs_", 1) != 1:
        raise NotImplementedError("multi-output forests")
    trees = []
    classification = hasattr(model, "classes_")
    for estimator in model.estimators_:
        tree = estimator.tree_
        value = tree.value[:, 0, :].astype(np.float64)
        if classification:  # as DecisionTreeClassifier.predict_proba: each leaf's class fractions
            total = value.sum(axis=1, keepdims=True)
            total[total == 0] = 1.0
            value = value / total
        missing = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=np.uint8))
        trees.append(_Tree(tree.feature.astype(np.int64), tree.threshold, tree.children_left.astype(np.int64),
                           tree.children_right.astype(np.int64), tree.children_left == -1, missing.astype(bool),
                           value))
    n_targets = trees[0].value.shape[1]
    return trees, np.zeros(n_targets), True, "average"


def _hgb_inputs(model: Any) -> tuple[np.ndarray, Any]:
    """For histogram gradient boosting: the input column of each column its trees split on (with categorical
    features, its own OrdinalEncoder puts those first), and a function giving a categorical node's input values that
    go left. sklearn sends a category left when its code is in the node's bitset, right when it is another known
    one, and like a missing value otherwise; the input values are the categories the model's encoder learnt."""
    preprocessor = getattr(model, "_preprocessor", None)
    n = model.n_features_in_
    if preprocessor is None:
        return np.arange(n), None
    column = np.empty(n, dtype=np.int64)
    for name, mask in (("encoder", model.is_categorical_), ("numerical", ~model.is_categorical_)):
        column[preprocessor.output_indices_[name]] = np.flatnonzero(mask)
    first = preprocessor.output_indices_["encoder"].start
    categories = preprocessor.named_transformers_["encoder"].categories_
    known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()

    def in_bitset(bitset: np.ndarray, code: int) -> bool:
        return bool((int(bitset[code // 32]) >> (code % 32)) & 1)

    def members(node: Any, predictor: Any) -> list[float]:
        feature = int(node["feature_idx"])
        left = []
        for code, raw in enumerate(categories[feature - first].tolist()):
            if raw != raw:  # NaN: a missing value, which follows missing_go_to_left
                continue
            if in_bitset(predictor.raw_left_cat_bitsets[node["bitset_idx"]], code) or \
                    (not in_bitset(known[f_idx_map[feature]], code) and node["missing_go_to_left"]):
                left.append(float(raw))
        return left

    return column, members


def _tree_ensemble_attributes(trees: list[_Tree], n_targets: int) -> dict[str, Any]:
    """The attributes of an opset-5 TreeEnsemble (SUM) computing, per target, the sum of the trees' leaves.
    A tree with several targets becomes one tree per target with a non-zero leaf value (the op's leaves
    carry one target each)."""
    from onnx import TensorProto, helper

    featureids, splits, modes, missing, membership = [], [], [], [], []
    true_ids, true_leaf, false_ids, false_leaf, roots = [], [], [], [], []
    leaf_targets, leaf_weights = [], []
    for tree in trees:
        for target in range(n_targets):
            if not tree.value[:, target].any() and n_targets > 1:
                continue
            node_index, leaf_index = {}, {}
            for i in range(len(tree.is_leaf)):  # number interior nodes and leaves in this tree's own order
                if tree.is_leaf[i]:
                    leaf_index[i] = len(leaf_targets) + len(leaf_index)
                else:
                    node_index[i] = len(featureids) + len(node_index)
            leaves = sorted(leaf_index, key=leaf_index.get)
            leaf_targets += [target] * len(leaves)
            leaf_weights += [float(tree.value[i, target]) for i in leaves]
            if not node_index:  # a single leaf: one node whose both branches end on it
                roots.append(len(featureids))
                featureids.append(0), splits.append(0.0), modes.append(0), missing.append(1)
                true_ids.append(leaf_index[0]), true_leaf.append(1), false_ids.append(leaf_index[0])
                false_leaf.append(1)
                continue
            roots.append(node_index[0])
            for i in sorted(node_index, key=node_index.get):
                left, right = int(tree.left[i]), int(tree.right[i])
                featureids.append(int(tree.feature[i]))
                splits.append(float(tree.threshold[i]))
                members = tree.members[i] if tree.members is not None else None
                if members is None:
                    modes.append(0)  # BRANCH_LEQ: x <= threshold goes left, as in sklearn
                else:
                    modes.append(6)  # BRANCH_MEMBER: a value among the members goes left
                    membership += [*members, np.nan]  # each node's set ends with a NaN
                missing.append(int(tree.missing_left[i]))
                for child, ids, flags in ((left, true_ids, true_leaf), (right, false_ids, false_leaf)):
                    leaf = bool(tree.is_leaf[child])
                    ids.append(leaf_index[child] if leaf else node_index[child])
                    flags.append(int(leaf))
    return dict(
        aggregate_function=1, n_targets=n_targets, post_transform=0, tree_roots=roots,
        nodes_featureids=featureids, nodes_truenodeids=true_ids, nodes_trueleafs=true_leaf,
        nodes_falsenodeids=false_ids, nodes_falseleafs=false_leaf, nodes_missing_value_tracks_true=missing,
        nodes_modes=helper.make_tensor("modes", TensorProto.UINT8, [len(modes)], modes),
        nodes_splits=helper.make_tensor("splits", TensorProto.DOUBLE, [len(splits)], splits),
        leaf_targetids=leaf_targets,
        leaf_weights=helper.make_tensor("weights", TensorProto.DOUBLE, [len(leaf_weights)], leaf_weights),
        **({"membership_values": helper.make_tensor("members", TensorProto.DOUBLE, [len(membership)], membership)}
           if membership else {}))


def _convert_calibrated(scope: Any, operator: Any, container: Any) -> None:
    """CalibratedClassifierCV (ensemble=False) as scikit-learn computes it: the classifier's scores (the forests'
    probabilities; gradient boosting's and logistic regression's decision function, asked of their converters as raw
    scores), each class's calibrator on its column (two classes: the positive one, column 1), then two classes as
    [1 - p, p] and more divided by their sum (uniform where it is 0), the label the most probable class. skl2onnx's
    own converter maps an isotonic calibrator's input to its nearest threshold; scikit-learn interpolates."""
    from onnx import TensorProto
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

    model = operator.raw_operator
    if len(model.calibrated_classifiers_) != 1 or model.method not in ("sigmoid", "isotonic"):
        raise NotImplementedError(f"CalibratedClassifierCV(method={model.method!r}) with "
                                  f"{len(model.calibrated_classifiers_)} calibrated classifiers (ensemble=True)")
    calibrated = model.calibrated_classifiers_[0]
    base, name = calibrated.estimator, scope.get_unique_variable_name
    classify = scope.declare_local_operator(sklearn_operator_name_map[type(base)], base)
    classify.inputs = operator.inputs
    if hasattr(base, "decision_function"):  # what scikit-learn calibrates when the classifier has it
        scope.add_options(id(base), {"raw_scores": True})
        container.add_options(id(base), {"raw_scores": True})
    text = base.classes_.dtype.kind not in "iub"
    classify.outputs.append(scope.declare_local_variable("label", StringTensorType() if text else Int64TensorType()))
    scores = scope.declare_local_variable("scores", DoubleTensorType())
    classify.outputs.append(scores)
    n_classes = len(model.classes_)
    columns = []
    for column, calibrator in zip([1] if n_classes == 2 else range(n_classes), calibrated.calibrators):
        index, score = name("column"), name("score")
        container.add_initializer(index, TensorProto.INT64, [1], [column])
        container.add_node("Gather", [scores.full_name, index], [score], axis=1)  # [n, 1]
        columns.append(_calibrator(scope, container, calibrator, score, model.method))
    probabilities = operator.outputs[1].full_name
    if n_classes == 2:
        one, negative = name("one"), name("negative")
        container.add_initializer(one, TensorProto.DOUBLE, [], [1.0])
        container.add_node("Sub", [one, columns[0]], [negative])
        container.add_node("Concat", [negative, columns[0]], [probabilities], axis=1)
    else:
        joined, total, axis, zero, empty, uniform, shares = (name(n) for n in (
            "joined", "total", "axis", "zero", "empty", "uniform", "shares"))
        container.add_node("Concat", columns, [joined], axis=1)
        container.add_initializer(axis, TensorProto.INT64, [1], [1])
        container.add_node("ReduceSum", [joined, axis], [total], keepdims=1)
        container.add_initializer(zero, TensorProto.DOUBLE, [], [0.0])
        container.add_node("Equal", [total, zero], [empty])
        container.add_initializer(uniform, TensorProto.DOUBLE, [], [1.0 / n_classes])
        container.add_node("Div", [joined, total], [shares])
        container.add_node("Where", [empty, uniform, shares], [probabilities])
    _labels(scope, container, probabilities, model.classes_, operator.outputs[0].full_name)


def _calibrator(scope: Any, container: Any, calibrator: Any, score: str, method: str) -> str:
    """One class's calibrated probability [n, 1] from its score [n, 1]: sigmoid 1 / (1 + exp(a * s + b)); isotonic
    scipy's linear interpolation between the thresholds (the score clipped to their range first), with the segment
    of each score found as scipy's searchsorted does and the slopes computed as scipy computes them."""
    from onnx import TensorProto

    name = scope.get_unique_variable_name
    out = name("calibrated")
    if method == "sigmoid":
        a, b, scaled, shifted, negative = (name(n) for n in ("a", "b", "scaled", "shifted", "negative"))
        container.add_initializer(a, TensorProto.DOUBLE, [], [float(calibrator.a_)])
        container.add_initializer(b, TensorProto.DOUBLE, [], [float(calibrator.b_)])
        container.add_node("Mul", [a, score], [scaled])
        container.add_node("Add", [scaled, b], [shifted])
        container.add_node("Neg", [shifted], [negative])
        container.add_node("Sigmoid", [negative], [out])
        return out
    x, y = np.asarray(calibrator.X_thresholds_, np.float64), np.asarray(calibrator.y_thresholds_, np.float64)
    if len(x) == 1:  # a constant
        zero, value, times = name("zero"), name("value"), name("times")
        container.add_initializer(zero, TensorProto.DOUBLE, [], [0.0])
        container.add_initializer(value, TensorProto.DOUBLE, [], [float(y[0])])
        container.add_node("Mul", [score, zero], [times])
        container.add_node("Add", [times, value], [out])
        return out
    low, high, clipped = name("low"), name("high"), name("clipped")
    container.add_initializer(low, TensorProto.DOUBLE, [], [float(calibrator.X_min_)])
    container.add_initializer(high, TensorProto.DOUBLE, [], [float(calibrator.X_max_)])
    container.add_node("Clip", [score, low, high], [clipped])
    # scipy: hi = searchsorted(x, s, "left") clipped to [1, len(x) - 1], lo = hi - 1; i.e. lo = the number of
    # interior thresholds strictly below s.
    interior, below, below_count, axis, segment = (name(n) for n in ("interior", "below", "count", "axis", "segment"))
    container.add_initializer(interior, TensorProto.DOUBLE, [1, len(x) - 2], x[1:-1].tolist())
    container.add_node("Less", [interior, clipped], [below])
    container.add_node("Cast", [below], [below_count], to=TensorProto.INT64)
    container.add_initializer(axis, TensorProto.INT64, [1], [1])
    container.add_node("ReduceSum", [below_count, axis], [segment], keepdims=1)  # [n, 1]
    slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    tables = {}
    for key, values in (("x_lo", x[:-1]), ("y_lo", y[:-1]), ("slope", slope)):
        table, picked = name(key), name(key + "_picked")
        container.add_initializer(table, TensorProto.DOUBLE, [len(values)], values.tolist())
        container.add_node("Gather", [table, segment], [picked], axis=0)
        tables[key] = picked
    offset, rise = name("offset"), name("rise")
    container.add_node("Sub", [clipped, tables["x_lo"]], [offset])
    container.add_node("Mul", [tables["slope"], offset], [rise])
    container.add_node("Add", [rise, tables["y_lo"]], [out])
    return out


def _labels(scope: Any, container: Any, probabilities: str, labels: np.ndarray, output: str) -> None:
    """The label of each row's most probable class (the first of equals, as numpy's argmax)."""
    from onnx import TensorProto

    index, classes = scope.get_unique_variable_name("index"), scope.get_unique_variable_name("classes")
    container.add_node("ArgMax", [probabilities], [index], axis=1, keepdims=0)
    if labels.dtype.kind in "iub":
        container.add_initializer(classes, TensorProto.INT64, [len(labels)], labels.astype(np.int64).tolist())
    else:
        container.add_initializer(classes, TensorProto.STRING, [len(labels)], [str(c).encode() for c in labels])
    container.add_node("Gather", [classes, index], [output], axis=0)


def _convert_trees(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables

    model = operator.raw_operator
    trees, base, float32_features, output = _sklearn_trees(model)
    n_targets = len(base)
    name = scope.get_unique_variable_name
    x = concatenate_variables(scope, operator.inputs, container)
    if float32_features:  # sklearn's trees compare float32 features with their double thresholds
        x32, x64 = name("x32"), name("x64")
        container.add_node("Cast", [x], [x32], to=TensorProto.FLOAT)
        container.add_node("Cast", [x32], [x64], to=TensorProto.DOUBLE)
        x = x64
    summed, raw = name("summed"), name("raw")
    # op_version 3: skl2onnx refuses a node above its target opset; convert() raises the model's to 5 afterwards.
    container.add_node("TreeEnsemble", [x], [summed], op_domain="ai.onnx.ml", op_version=3,
                       name=scope.get_unique_operator_name("TreeEnsemble"),
                       **_tree_ensemble_attributes(trees, n_targets))
    constant = name("constant")
    if output == "average":  # sklearn sums the trees' answers, then divides by their count
        container.add_initializer(constant, TensorProto.DOUBLE, [], [float(len(model.estimators_))])
        container.add_node("Div", [summed, constant], [raw])
    else:
        container.add_initializer(constant, TensorProto.DOUBLE, [1, n_targets], base.tolist())
        container.add_node("Add", [summed, constant], [raw])
    if not hasattr(model, "classes_"):
        container.add_node("Identity", [raw], [operator.outputs[0].full_name])
        return
    probabilities = operator.outputs[1].full_name
    # Our CalibratedClassifierCV converter asks for raw scores where scikit-learn calibrates the decision_function
    # (gradient boosting has one; forests have none and are calibrated on their probabilities): two classes as
    # [-score, score] (the calibrator reads column 1), more as the per-class scores.
    raw_scores = output != "average" and scope.get_options(model, dict(raw_scores=False))["raw_scores"]
    if raw_scores and output == "sigmoid":
        negative = name("negative")
        container.add_node("Neg", [raw], [negative])
        container.add_node("Concat", [negative, raw], [probabilities], axis=1)
    elif raw_scores:
        container.add_node("Identity", [raw], [probabilities])
    elif output == "sigmoid":
        positive, one, negative = name("positive"), name("one"), name("negative")
        container.add_node("Sigmoid", [raw], [positive])
        container.add_initializer(one, TensorProto.DOUBLE, [], [1.0])
        container.add_node("Sub", [one, positive], [negative])
        container.add_node("Concat", [negative, positive], [probabilities], axis=1)
    elif output == "softmax":
        container.add_node("Softmax", [raw], [probabilities], axis=1)
    else:
        container.add_node("Identity", [raw], [probabilities])
    _labels(scope, container, probabilities, model.classes_, operator.outputs[0].full_name)


def _same_type_shape(operator: Any) -> None:
    """An imputer's output: its inputs' type (doubles after our encoders, whatever type skl2onnx guessed for their
    output while parsing), their columns side by side."""
    rows = operator.inputs[0].get_first_dimension()
    widths = [variable.type.shape[1] for variable in operator.inputs]
    width = None if None in widths else sum(widths)
    operator.outputs[0].type = type(operator.inputs[0].type)([rows, width])


def _width_shape(operator: Any) -> None:
    """A transformer's output: doubles, as many columns as its feature names."""
    from skl2onnx.common.data_types import DoubleTensorType

    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = DoubleTensorType([rows, len(operator.raw_operator.get_feature_names_out())])


def _encoder_blocks(encoder: Any) -> list[int]:
    """How many output columns each input column of an encoder fills (in order: each encodes its columns apart)."""
    from sklearn.preprocessing import OneHotEncoder, TargetEncoder

    if isinstance(encoder, OneHotEncoder):
        return list(encoder._n_features_outs)
    if isinstance(encoder, TargetEncoder) and encoder.target_type_ == "multiclass":
        return [len(encoder.classes_)] * len(encoder.categories_)
    return [1] * len(encoder.categories_)


def _convert_lookup(scope: Any, operator: Any, container: Any) -> None:
    """OrdinalEncoder, TargetEncoder, OneHotEncoder on text as table lookups, each column apart: LabelEncoder maps a
    category to its row, Gather takes that row of a double table. The table is what the fitted encoder itself
    outputs for each category, for a missing value (MISSING_CATEGORY) and for a value it never saw (the last row):
    the infrequent bucket, unknown codes and the target mean are the encoder's own answers."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import StringTensorType
    from skl2onnx.operator_converters.common import concatenate_variables

    encoder = operator.raw_operator
    if not isinstance(operator.inputs[0].type, StringTensorType):
        raise NotImplementedError(f"{type(encoder).__name__} on numbers")
    name = scope.get_unique_variable_name
    x = concatenate_variables(scope, operator.inputs, container)
    columns = list(getattr(encoder, "feature_names_in_", range(len(encoder.categories_))))
    base = {column: [categories[0]] for column, categories in zip(columns, encoder.categories_)}
    outputs, start = [], 0
    for j, (categories, width) in enumerate(zip(encoder.categories_, _encoder_blocks(encoder))):
        keys = [c for c in categories.tolist() if not (c is None or (isinstance(c, float) and c != c))]
        if not all(isinstance(k, str) for k in keys):
            raise NotImplementedError(f"{type(encoder).__name__} column {columns[j]!r} has non-text categories "
                                      f"{keys[:5]}")
        values = [*keys, None, NOT_TEXT]  # the categories, a missing value, one never seen
        frame = model_frame({column: np.array(values if c == j else base[column] * len(values), dtype=object)
                             for c, column in enumerate(columns)})
        encoded = encoder.transform(frame if hasattr(encoder, "feature_names_in_") else frame.to_numpy())
        block = encoded[:, start:start + width]
        start += width
        column, index, flat, gathered = name("column"), name("index"), name("flat"), name("encoded")
        picked, shape = name("picked"), name("shape")
        container.add_initializer(picked, TensorProto.INT64, [1], [j])
        container.add_initializer(shape, TensorProto.INT64, [1], [-1])
        container.add_node("Gather", [x, picked], [column], axis=1)
        container.add_node("LabelEncoder", [column], [index], op_domain="ai.onnx.ml", op_version=2,
                           name=scope.get_unique_operator_name("LabelEncoder"),
                           keys_strings=[*keys, MISSING_CATEGORY], values_int64s=list(range(len(keys) + 1)),
                           default_int64=len(keys) + 1)
        container.add_node("Reshape", [index, shape], [flat])
        hot = _hot_columns(block)
        if hot is not None:  # one-hot: each row's one column (-1: none), compared with the columns' numbers
            positions, numbers, chosen, equal = name("positions"), name("numbers"), name("chosen"), name("equal")
            container.add_initializer(positions, TensorProto.INT64, [len(hot), 1], hot.tolist())
            container.add_initializer(numbers, TensorProto.INT64, [1, width], list(range(width)))
            container.add_node("Gather", [positions, flat], [chosen], axis=0)
            container.add_node("Equal", [chosen, numbers], [equal])
            container.add_node("Cast", [equal], [gathered], to=TensorProto.DOUBLE)
        else:
            rows = name("rows")
            table = np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float64)
            container.add_initializer(rows, TensorProto.DOUBLE, list(table.shape), table.ravel().tolist())
            container.add_node("Gather", [rows, flat], [gathered], axis=0)
        outputs.append(gathered)
    if len(outputs) == 1:
        container.add_node("Identity", outputs, [operator.outputs[0].full_name])
    else:
        container.add_node("Concat", outputs, [operator.outputs[0].full_name], axis=1)


def _hot_columns(block: Any) -> np.ndarray | None:
    """For a sparse one-hot block, the column each row sets to 1 (-1 where none is set): what a one-hot lookup needs
    instead of a [categories, columns] table (4,000 categories would be 128 MB of doubles). None for anything
    else."""
    if not hasattr(block, "tocsr"):
        return None
    block = block.tocsr()
    block.eliminate_zeros()
    counts = np.diff(block.indptr)
    if counts.max(initial=0) > 1 or not np.all(block.data == 1.0):
        return None
    hot = np.full(block.shape[0], -1, dtype=np.int64)
    hot[counts == 1] = block.indices
    return hot


def _cyclical_tables(cyclical: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sine and cosine DatetimeFeatures gives each value of a cyclical part (indexed by the part: month 1-12,
    day of week 0-6, hour 0-23), from the transformer itself: ONNX Runtime's Sin is not numpy's (sin(pi) is 0 there,
    1.2e-16 here), and a tree may split between the two."""
    import pandas as pd

    from serving.features import DatetimeFeatures

    if not cyclical:
        return {}
    moments = {"month": pd.date_range("2001-01-01", periods=12, freq="MS"),
               "dayofweek": pd.date_range("2001-01-01", periods=7, freq="D"),  # a Monday
               "hour": pd.date_range("2001-01-01", periods=24, freq="h")}
    tables = {}
    for part, stamps in moments.items():
        frame = pd.DataFrame({"t": stamps})
        transformer = DatetimeFeatures(cyclical=True).fit(frame)
        out = pd.DataFrame(transformer.transform(frame), columns=transformer.get_feature_names_out())
        offset = np.full(1 if part == "month" else 0, np.nan)  # months start at 1: index 0 is never read
        tables[part] = (np.r_[offset, out[f"t.{part}_sin"].to_numpy()], np.r_[offset, out[f"t.{part}_cos"].to_numpy()])
    return tables


def _convert_datetime(scope: Any, operator: Any, container: Any) -> None:
    """serving.features.DatetimeFeatures on seconds since 1970 (OnnxPredictor's input for a datetime): hour and day
    of week by whole-number arithmetic, the calendar date by Howard Hinnant's civil_from_days, all exact in double;
    the sine and cosine of a cyclical part looked up in a table of the transformer's own values. NaN (a missing
    value) stays NaN."""
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables

    from serving.features import PARTS, PERIODS

    transformer = operator.raw_operator
    name = scope.get_unique_variable_name
    x = concatenate_variables(scope, operator.inputs, container)
    constants: dict[float, str] = {}

    def const(value: float) -> str:
        if value not in constants:
            constants[value] = name("c")
            container.add_initializer(constants[value], TensorProto.DOUBLE, [], [float(value)])
        return constants[value]

    def op(kind: str, *args: str, **attributes: Any) -> str:
        out = name(kind.lower())
        container.add_node(kind, list(args), [out], **attributes)
        return out

    def floordiv(a: str, b: float) -> str:
        return op("Floor", op("Div", a, const(b)))

    cyclical = _cyclical_tables(transformer.cyclical)
    flat, column = name("flat"), name("column")
    if cyclical:  # the shapes the table lookups need (an initializer nothing reads is a warning at every load)
        container.add_initializer(flat, TensorProto.INT64, [1], [-1])
        container.add_initializer(column, TensorProto.INT64, [2], [-1, 1])
    outputs = []
    for j in range(transformer.n_features_in_):
        picked = name("picked")
        container.add_initializer(picked, TensorProto.INT64, [1], [j])
        seconds = op("Gather", x, picked, axis=1) if transformer.n_features_in_ > 1 else x
        days = floordiv(seconds, 86400)
        hour = floordiv(op("Sub", seconds, op("Mul", days, const(86400))), 3600)
        shifted = op("Add", days, const(3))  # 1970-01-01 was a Thursday (Monday is 0)
        dayofweek = op("Sub", shifted, op("Mul", floordiv(shifted, 7), const(7)))
        z = op("Add", days, const(719468))
        era = floordiv(z, 146097)
        doe = op("Sub", z, op("Mul", era, const(146097)))
        yoe = floordiv(op("Sub", op("Add", op("Sub", doe, floordiv(doe, 1460)), floordiv(doe, 36524)),
                          floordiv(doe, 146096)), 365)
        doy = op("Sub", doe, op("Sub", op("Add", op("Mul", yoe, const(365)), floordiv(yoe, 4)), floordiv(yoe, 100)))
        mp = floordiv(op("Add", op("Mul", doy, const(5)), const(2)), 153)
        day = op("Add", op("Sub", doy, floordiv(op("Add", op("Mul", mp, const(153)), const(2)), 5)), const(1))
        early = op("Less", mp, const(10))
        month = op("Where", early, op("Add", mp, const(3)), op("Sub", mp, const(9)))
        january = op("Cast", op("LessOrEqual", month, const(2)), to=TensorProto.DOUBLE)
        year = op("Add", op("Add", yoe, op("Mul", era, const(400))), january)
        parts = {"year": year, "month": month, "day": day, "dayofweek": dayofweek, "hour": hour}
        for part in PARTS:
            outputs.append(parts[part])
            if transformer.cyclical and part in PERIODS:
                missing = op("IsNaN", parts[part])
                index = op("Cast", op("Where", missing, const(0), parts[part]), to=TensorProto.INT64)
                for table in cyclical[part]:
                    values = name("table")
                    container.add_initializer(values, TensorProto.DOUBLE, [len(table)], table.tolist())
                    gathered = op("Gather", values, op("Reshape", index, flat))
                    outputs.append(op("Where", missing, const(np.nan), op("Reshape", gathered, column)))
    container.add_node("Concat", outputs, [operator.outputs[0].full_name], axis=1)
