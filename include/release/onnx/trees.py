"""Tree ensembles (random forest, extra trees, histogram gradient boosting) as one opset-5 TreeEnsemble node in
double: the trees as sklearn holds them, read into arrays, then the node's attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from include.release.onnx.graph import labels


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


def convert_trees(scope: Any, operator: Any, container: Any) -> None:
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
    labels(scope, container, probabilities, model.classes_, operator.outputs[0].full_name)
