"""The compiled predictor: a bundle's sklearn pipeline as an ONNX Runtime session, served only if it answers as sklearn.

skl2onnx converts the pipeline in double precision (the inputs sklearn receives: float64 numbers, text categories),
with three converters of our own where its defaults would change the answers or ONNX Runtime cannot run them:

- SimpleImputer: the fill values as double constants (skl2onnx's Imputer node holds float32 and ORT runs it in
  float only), and a missing category (None, NaN to sklearn) as a text marker no client can send.
- Tree ensembles (random forest, extra trees, histogram gradient boosting): the ai.onnx.ml opset-5 `TreeEnsemble`
  node in double (the opset-3 nodes skl2onnx writes keep float32 leaves and sums, ~3e-6 off for 100 trees). A
  forest compares float32-cast features with double thresholds, as sklearn's trees do (they cast X to float32);
  leaves add up in double. Histogram gradient boosting compares float64 features, as sklearn does.

`compile_predictor` then predicts the self-check rows and generated edge rows (each numeric feature at its min, max
and quantiles of its range, each category, missing values where nullable) with both and keeps the session only if
regression answers agree within 1e-9 relative (absolute below 1) and classifications have the same labels and
probabilities within 1e-6. Otherwise, or if anything in conversion fails, sklearn serves and `Engine.reason` says
why. The estimator itself is never changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.contract import Contract

log = logging.getLogger(__name__)

ONNX = "onnxruntime"
SKLEARN = "sklearn"
MISSING_CATEGORY = "\x00missing"  # what a missing category becomes: validation never lets a NUL through
NUMERIC_INPUT = "numeric_features"  # not a valid skl2onnx name for a feature (they keep their spaces as "_")
REGRESSION_RTOL = 1e-9
PROBABILITY_ATOL = 1e-6
_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
_OPSETS = {"": 21, "ai.onnx.ml": 3}  # skl2onnx writes up to 3; the graph is then raised to 5 (TreeEnsemble)


@dataclass(frozen=True)
class Engine:
    """What serves a model, and why not ONNX Runtime when it does not."""

    name: str
    reason: str | None = None


class DisagreementError(Exception):
    """The compiled predictor answers differently from the sklearn pipeline on some checked row."""


class OnnxPredictor:
    """An ONNX Runtime session with the pipeline's inputs: the numeric features as one [n, k] double tensor in
    contract order (NUMERIC_INPUT), each text feature as an [n, 1] tensor of its own."""

    def __init__(self, model_bytes: bytes, contract: Contract, classes: list[Any] | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Parallelism comes from gunicorn workers and micro-batching; a thread pool per session only contends.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        # One RunOptions for every call (Run only reads it): without one, each call builds a default (~5 µs).
        self.run_options = ort.RunOptions()
        self.numeric = [f.name for f in contract.features if f.is_numeric]
        # skl2onnx makes names valid identifiers ("fixed acidity" -> "fixed_acidity"); inputs keep their order.
        text_inputs = [i.name for i in self.session.get_inputs() if i.name != NUMERIC_INPUT]
        self.text = list(zip([f.name for f in contract.features if not f.is_numeric], text_inputs))
        self.classes = classes
        self.outputs = [o.name for o in self.session.get_outputs()][:1 if classes is None else 2]

    def predict(self, columns: dict[str, np.ndarray],
                numeric: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`numeric`: the numeric columns as one [n, k] array, when the caller has them so (inputs.Batch)."""
        feeds = {}
        if self.numeric:
            if numeric is None:
                numeric = np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in self.numeric])
            feeds[NUMERIC_INPUT] = np.ascontiguousarray(numeric, dtype=np.float64)
        for name, onnx_name in self.text:
            values = [MISSING_CATEGORY if v is None else v for v in columns[name]]
            feeds[onnx_name] = np.array(values, dtype=object).reshape(-1, 1)
        out = self.session.run(self.outputs, feeds, self.run_options)
        if self.classes is None:
            return out[0].reshape(-1), None
        return out[0].reshape(-1), out[1]


def compile_predictor(estimator: Any, contract: Contract, check_rows: list[dict[str, Any]],
                      sklearn_predict: Any) -> tuple[OnnxPredictor | None, Engine]:
    """The ONNX Runtime predictor for `estimator` if it agrees with `sklearn_predict(columns)` -> (values,
    probabilities) on check_rows plus generated edge rows; else None and the reason."""
    try:
        predictor = OnnxPredictor(convert(estimator, contract), contract, _classes(estimator, contract))
        compare(predictor, sklearn_predict, contract, check_rows + edge_rows(contract, check_rows))
    except Exception as exc:  # noqa: BLE001 - whatever fails here, sklearn serves and the reason is shown
        return None, Engine(SKLEARN, f"{type(exc).__name__}: {_short(str(exc))}")
    return predictor, Engine(ONNX)


def convert(estimator: Any, contract: Contract) -> bytes:
    """The pipeline as a serialized ONNX model: the numeric features as one input, each text feature as one."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from sklearn import ensemble
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.impute import SimpleImputer

    for feature in contract.features:
        if not feature.is_numeric and feature.allowed and not all(isinstance(a, str) for a in feature.allowed):
            raise TypeError(f"categorical feature {feature.name!r} has non-text values {list(feature.allowed)[:5]}")
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if isinstance(final, CalibratedClassifierCV) and final.method != "sigmoid":
        raise NotImplementedError(f"{final.method} calibration is not converted: skl2onnx maps a score to the nearest "
                                  "of the calibrator's thresholds, where scikit-learn interpolates between them")
    inputs = [(f.name, DoubleTensorType([None, 1]) if f.is_numeric else StringTensorType([None, 1]))
              for f in contract.features]
    forests = (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier)
    trees = {cls: _convert_trees for cls in (*forests, ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor,
                                             ensemble.HistGradientBoostingRegressor,
                                             ensemble.HistGradientBoostingClassifier)}
    shapes = {cls: _double_probabilities for cls in forests}
    options = {id(final): {"zipmap": False}} if contract.task == "classification" else None
    onx = convert_sklearn(estimator, initial_types=inputs, target_opset=_OPSETS, options=options,
                           custom_conversion_functions={SimpleImputer: _convert_imputer, **trees},
                           custom_shape_calculators=shapes)
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            # TreeEnsemble needs 5. The other ai.onnx.ml ops skl2onnx writes mean the same at 5; the agreement
            # check would catch one that did not.
            opset.version = 5
    _one_numeric_input(onx.graph, sum(f.is_numeric for f in contract.features))
    return onx.SerializeToString()


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


def edge_rows(contract: Contract, base_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first base row (or the contract's example) varied one feature at a time: each numeric feature at the
    quantiles of its range, each category, a missing value where nullable; then every such value in one row."""
    base = dict(base_rows[0]) if base_rows else contract.example_row()
    rows, mixed = [], []
    for feature in contract.features:
        values: list[Any] = []
        if feature.is_numeric:
            lo = feature.min if feature.min is not None else -1e6
            hi = feature.max if feature.max is not None else 1e6
            values = [lo + q * (hi - lo) for q in _QUANTILES]
            values = [round(v) for v in values] if feature.dtype == "int" else values
        elif feature.allowed:
            values = list(feature.allowed)
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


def _classes(estimator: Any, contract: Contract) -> list[Any] | None:
    return estimator.classes_.tolist() if contract.task == "classification" else None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- skl2onnx converters (called by to_onnx with its scope, operator and container) ---------------------------------

def _double_probabilities(operator: Any) -> None:
    """skl2onnx's parser declares a random forest's probabilities float; ours are double, like the features."""
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


def _sklearn_trees(model: Any) -> tuple[list[_Tree], np.ndarray, bool, str]:
    """The model's trees (each target's trees for a multi-class forest), the base value per target, whether
    features are cast to float32 first, and how the summed leaves become the output."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if isinstance(model, (HistGradientBoostingRegressor, HistGradientBoostingClassifier)):
        if isinstance(model, HistGradientBoostingRegressor) and model.loss not in ("squared_error", "absolute_error",
                                                                                   "quantile"):
            raise NotImplementedError(f"HistGradientBoostingRegressor(loss={model.loss!r}) has a non-identity link")
        trees = []
        for iteration in model._predictors:
            for target, predictor in enumerate(iteration):
                nodes = predictor.nodes
                if nodes["is_categorical"].any():
                    raise NotImplementedError("histogram gradient boosting with native categorical splits")
                value = np.zeros((len(nodes), len(iteration)))
                value[:, target] = nodes["value"]
                trees.append(_Tree(nodes["feature_idx"], nodes["num_threshold"], nodes["left"].astype(np.int64),
                                   nodes["right"].astype(np.int64), nodes["is_leaf"].astype(bool),
                                   nodes["missing_go_to_left"].astype(bool), value))
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


def _tree_ensemble_attributes(trees: list[_Tree], n_targets: int) -> dict[str, Any]:
    """The attributes of an opset-5 TreeEnsemble (SUM) computing, per target, the sum of the trees' leaves.
    A tree with several targets becomes one tree per target with a non-zero leaf value (the op's leaves
    carry one target each)."""
    from onnx import TensorProto, helper

    featureids, splits, modes, missing = [], [], [], []
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
                modes.append(0)  # BRANCH_LEQ: x <= threshold goes left, as in sklearn
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
        leaf_weights=helper.make_tensor("weights", TensorProto.DOUBLE, [len(leaf_weights)], leaf_weights))


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
    # skl2onnx's CalibratedClassifierCV converter asks for raw scores where scikit-learn calibrates the
    # decision_function (gradient boosting has one; forests have none and are calibrated on their probabilities):
    # two classes as [-score, score] (the calibrator reads column 1), more as the per-class scores.
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
    index, classes = name("index"), name("classes")
    container.add_node("ArgMax", [probabilities], [index], axis=1, keepdims=0)
    labels = model.classes_
    if labels.dtype.kind in "iub":
        container.add_initializer(classes, TensorProto.INT64, [len(labels)], labels.astype(np.int64).tolist())
    else:
        container.add_initializer(classes, TensorProto.STRING, [len(labels)], [str(c).encode() for c in labels])
    container.add_node("Gather", [classes, index], [operator.outputs[0].full_name], axis=0)
