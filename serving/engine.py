"""The compiled predictor: a bundle's sklearn pipeline as an ONNX Runtime session, served only if it answers as sklearn.

skl2onnx converts the pipeline in double precision (the inputs sklearn receives: float64 numbers, text categories,
datetimes fed as seconds since the epoch), with converters of our own where its defaults would change the answers or
ONNX Runtime cannot run them:

- SimpleImputer: the fill values as double constants (skl2onnx's Imputer node holds float32 and ORT runs it in
  float only; float inputs such as an OrdinalEncoder's codes are cast first), and a missing category (None, NaN to
  sklearn) as a text marker no client can send.
- TargetEncoder: a LabelEncoder per column (and class) from category text to its encoding in double (skl2onnx's
  writes float32 and refuses a multiclass target); a missing value takes the missing category's encoding, an unseen
  one the target mean.
- DatetimeFeatures (serving/features.py): year, month, day, weekday and hour from the seconds by the days-to-civil
  calendar algorithm, in whole-number doubles (and their sine and cosine with `cyclical`).
- Tree ensembles (random forest, extra trees, histogram gradient boosting): the ai.onnx.ml opset-5 `TreeEnsemble`
  node in double (the opset-3 nodes skl2onnx writes keep float32 leaves and sums, ~3e-6 off for 100 trees). A
  forest compares float32-cast features with double thresholds, as sklearn's trees do (they cast X to float32);
  leaves add up in double. Histogram gradient boosting compares float64 features, as sklearn does; its categorical
  splits become set-membership branches (BRANCH_MEMBER) on the codes its inputs carry.
- CalibratedClassifierCV (model.calibration, one calibrated classifier): the classifier's probabilities or decision
  function (a boosted classifier asked for raw scores gives its decision function), each class's sigmoid or
  isotonic calibrator, sklearn's normalisation. skl2onnx's converter maps an isotonic calibrator's input to the
  nearest threshold; sklearn (scipy) interpolates between thresholds.

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
from serving.features import PARTS, PERIOD_START, PERIODS, DatetimeFeatures, parse_datetimes

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
        own_inputs = [i.name for i in self.session.get_inputs() if i.name != NUMERIC_INPUT]
        self.text = list(zip([f for f in contract.features if not f.is_numeric], own_inputs))
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
        for feature, onnx_name in self.text:
            if feature.dtype == "datetime":  # seconds since the epoch, NaN where missing (_convert_datetimes)
                moments = parse_datetimes(columns[feature.name], feature.format)[0]
                seconds = np.where(np.isnat(moments), np.nan, moments.astype(np.int64) / 1e9)
                feeds[onnx_name] = seconds.reshape(-1, 1)
                continue
            values = [MISSING_CATEGORY if v is None else v for v in columns[feature.name]]
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
    from sklearn.preprocessing import TargetEncoder

    for feature in contract.features:
        if not feature.is_numeric and feature.allowed and not all(isinstance(a, str) for a in feature.allowed):
            raise TypeError(f"categorical feature {feature.name!r} has non-text values {list(feature.allowed)[:5]}")
    inputs = [(f.name, DoubleTensorType([None, 1]) if f.is_numeric or f.dtype == "datetime"
               else StringTensorType([None, 1])) for f in contract.features]
    forests = (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier)
    trees = {cls: _convert_trees for cls in (*forests, ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor,
                                             ensemble.HistGradientBoostingRegressor,
                                             ensemble.HistGradientBoostingClassifier)}
    shapes = {cls: _double_probabilities for cls in (*forests, ensemble.HistGradientBoostingClassifier,
                                                     CalibratedClassifierCV)}
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": False}} if contract.task == "classification" else None
    onx = convert_sklearn(estimator, initial_types=inputs, target_opset=_OPSETS, options=options,
                           custom_conversion_functions={SimpleImputer: _convert_imputer,
                                                        TargetEncoder: _convert_target_encoder,
                                                        CalibratedClassifierCV: _convert_calibrated,
                                                        DatetimeFeatures: _convert_datetimes, **trees},
                           custom_shape_calculators={SimpleImputer: _imputer_shape,
                                                     TargetEncoder: _target_encoder_shape,
                                                     DatetimeFeatures: _datetimes_shape, **shapes})
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            # TreeEnsemble needs 5. The other ai.onnx.ml ops skl2onnx writes mean the same at 5; the agreement
            # check would catch one that did not.
            opset.version = 5
    _one_numeric_input(onx.graph, [f.is_numeric for f in contract.features])
    return onx.SerializeToString()


def _one_numeric_input(graph: Any, numeric_features: list[bool]) -> None:
    """Feed the numeric features as one [n, k] tensor, split back into skl2onnx's per-feature inputs: a session
    run costs per input (one row of the default forest: 23 -> 11 µs with 11 features). skl2onnx's first step is
    usually a Concat of exactly those inputs, which then goes (its output is the new input itself). The graph's
    inputs are the features in contract order (`numeric_features` says which are numeric)."""
    from onnx import TensorProto, helper

    if len(graph.input) != len(numeric_features):
        raise ValueError(f"the converted model has {len(graph.input)} inputs for {len(numeric_features)} features")
    numeric = [i.name for i, is_numeric in zip(graph.input, numeric_features) if is_numeric]
    if not numeric:
        return
    if any(i.type.tensor_type.elem_type != TensorProto.DOUBLE for i in graph.input if i.name in numeric):
        raise ValueError("a numeric feature's converted input is not a double tensor")
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
    """skl2onnx declares a forest's probabilities float, and a calibrated classifier's float when its input is (an
    OrdinalEncoder's codes); ours are double, like the features."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    calculate_linear_classifier_output_shapes(operator)
    operator.outputs[1].type = DoubleTensorType(shape=operator.outputs[1].type.shape)


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer as Where(missing, fill, x): doubles stay doubles; a missing category is MISSING_CATEGORY."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
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
        if not isinstance(operator.inputs[0].type, DoubleTensorType):  # e.g. an OrdinalEncoder's float codes
            as_double = scope.get_unique_variable_name("as_double")
            container.add_node("Cast", [x], [as_double], to=TensorProto.DOUBLE)
            x = as_double
        container.add_initializer(fill, TensorProto.DOUBLE, [1, len(statistics)], statistics.astype(np.float64))
        container.add_node("IsNaN", [x], [mask])
    container.add_node("Where", [mask, fill, x], [operator.outputs[0].full_name])


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


def _imputer_shape(operator: Any) -> None:
    """The imputer's output: text stays text, numbers become doubles (what _convert_imputer writes)."""
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    width = sum(i.type.shape[1] for i in operator.inputs)
    text = isinstance(operator.inputs[0].type, StringTensorType)
    operator.outputs[0].type = (StringTensorType if text else DoubleTensorType)([None, width])


def _convert_target_encoder(scope: Any, operator: Any, container: Any) -> None:
    """TargetEncoder (a continuous or binary target) as one LabelEncoder per column mapping each category's text to
    its encoding in double (skl2onnx's own converter writes float32, which moves values across split thresholds).
    A missing value (MISSING_CATEGORY) takes the missing category's encoding when training saw one; anything else
    unseen takes the target mean, as in scikit-learn."""
    from onnx import TensorProto, helper
    from skl2onnx.operator_converters.common import concatenate_variables

    encoder = operator.raw_operator
    means = np.atleast_1d(np.asarray(encoder.target_mean_, dtype=np.float64))  # one per class when multiclass
    x = concatenate_variables(scope, operator.inputs, container)
    name = scope.get_unique_variable_name
    columns = []
    for j, categories in enumerate(encoder.categories_):
        keys = [MISSING_CATEGORY if _is_missing(c) else str(c) for c in categories]
        if len(set(keys)) != len(keys):
            raise NotImplementedError(f"TargetEncoder categories of column {j} are not distinct as text")
        index, column = name("index"), name("column")
        container.add_initializer(index, TensorProto.INT64, [1], [j])
        container.add_node("Gather", [x, index], [column], axis=1)
        for k, mean in enumerate(means):  # encodings_ holds, per column, one array per class (one if not multiclass)
            encoded = name("encoded")
            # op_version 2: skl2onnx refuses a node above its target opset; convert() raises the model's to 5.
            container.add_node(
                "LabelEncoder", [column], [encoded], op_domain="ai.onnx.ml", op_version=2,
                name=scope.get_unique_operator_name("LabelEncoder"), keys_strings=keys,
                values_tensor=helper.make_tensor("values", TensorProto.DOUBLE, [len(keys)], np.asarray(
                    encoder.encodings_[j * len(means) + k], dtype=np.float64).tolist()),
                default_tensor=helper.make_tensor("default", TensorProto.DOUBLE, [1], [float(mean)]))
            columns.append(encoded)
    container.add_node("Concat", columns, [operator.outputs[0].full_name], axis=1)


def _convert_datetimes(scope: Any, operator: Any, container: Any) -> None:
    """DatetimeFeatures on seconds since the epoch (what OnnxPredictor feeds a datetime feature): the calendar by
    Howard Hinnant's days-to-civil algorithm in whole-number doubles; a missing value (NaN) stays NaN throughout."""
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables

    transformer = operator.raw_operator
    x = concatenate_variables(scope, operator.inputs, container)
    name = scope.get_unique_variable_name
    constants: dict[float, str] = {}

    def c(value: float) -> str:
        if value not in constants:
            constants[value] = name("c")
            container.add_initializer(constants[value], TensorProto.DOUBLE, [], [float(value)])
        return constants[value]

    def op(kind: str, *args: str, **attributes: Any) -> str:
        out = name(kind.lower())
        container.add_node(kind, list(args), [out], **attributes)
        return out

    def floor_div(a: str, b: float) -> str:
        return op("Floor", op("Div", a, c(b)))

    outputs = []
    for j in range(transformer.n_features_in_):
        index, seconds = name("index"), name("seconds")
        container.add_initializer(index, TensorProto.INT64, [1], [j])
        container.add_node("Gather", [x, index], [seconds], axis=1)
        days = floor_div(seconds, 86400)
        hour = floor_div(op("Sub", seconds, op("Mul", days, c(86400))), 3600)
        weekday = op("Mod", op("Add", days, c(3)), c(7), fmod=1)  # 1970-01-01 was a Thursday (Monday is 0)
        weekday = op("Where", op("Less", weekday, c(0)), op("Add", weekday, c(7)), weekday)
        z = op("Add", days, c(719468))  # days since 0000-03-01
        era = floor_div(z, 146097)
        doe = op("Sub", z, op("Mul", era, c(146097)))
        yoe = floor_div(op("Sub", op("Add", op("Sub", doe, floor_div(doe, 1460)), floor_div(doe, 36524)),
                           floor_div(doe, 146096)), 365)
        doy = op("Sub", doe, op("Sub", op("Add", op("Mul", yoe, c(365)), floor_div(yoe, 4)), floor_div(yoe, 100)))
        mp = floor_div(op("Add", op("Mul", doy, c(5)), c(2)), 153)
        day = op("Add", op("Sub", doy, floor_div(op("Add", op("Mul", mp, c(153)), c(2)), 5)), c(1))
        month = op("Where", op("Less", mp, c(10)), op("Add", mp, c(3)), op("Sub", mp, c(9)))
        early = op("Cast", op("LessOrEqual", month, c(2)), to=TensorProto.DOUBLE)  # January, February: next year
        year = op("Add", op("Add", yoe, op("Mul", era, c(400))), early)
        parts = {"year": year, "month": month, "day": day, "dayofweek": weekday, "hour": hour}
        for part in PARTS:
            outputs.append(parts[part])
            if transformer.cyclical and part in PERIODS:
                start = PERIOD_START.get(part, 0)
                angle = op("Div", op("Mul", op("Sub", parts[part], c(start)), c(2 * np.pi)), c(PERIODS[part]))
                outputs += [op("Sin", angle), op("Cos", angle)]
    container.add_node("Concat", outputs, [operator.outputs[0].full_name], axis=1)


def _datetimes_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType

    transformer = operator.raw_operator
    width = len(transformer.get_feature_names_out()) if hasattr(transformer, "columns_") else 0
    operator.outputs[0].type = DoubleTensorType([None, width])


def _target_encoder_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType

    classes = np.size(operator.raw_operator.target_mean_)
    operator.outputs[0].type = DoubleTensorType([None, classes * sum(i.type.shape[1] for i in operator.inputs)])


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


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
    # per node, for a categorical split: the input values that go left (any other value goes right); else None
    members: list[np.ndarray | None] | None = None


def _sklearn_trees(model: Any) -> tuple[list[_Tree], np.ndarray, bool, str]:
    """The model's trees (each target's trees for a multi-class forest), the base value per target, whether
    features are cast to float32 first, and how the summed leaves become the output."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if isinstance(model, (HistGradientBoostingRegressor, HistGradientBoostingClassifier)):
        if isinstance(model, HistGradientBoostingRegressor) and model.loss not in ("squared_error", "absolute_error",
                                                                                   "quantile"):
            raise NotImplementedError(f"HistGradientBoostingRegressor(loss={model.loss!r}) has a non-identity link")
        trees = []
        original, categories = _hgb_inputs(model)
        for iteration in model._predictors:
            for target, predictor in enumerate(iteration):
                nodes = predictor.nodes
                value = np.zeros((len(nodes), len(iteration)))
                value[:, target] = nodes["value"]
                members = None
                if nodes["is_categorical"].any():
                    members = [_left_categories(predictor.raw_left_cat_bitsets[node["bitset_idx"]],
                                                categories[node["feature_idx"]]) if node["is_categorical"] else None
                               for node in nodes]
                trees.append(_Tree(original[nodes["feature_idx"]], nodes["num_threshold"],
                                   nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                                   nodes["is_leaf"].astype(bool), nodes["missing_go_to_left"].astype(bool), value,
                                   members))
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


def _hgb_inputs(model: Any) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """For each feature index of a histogram gradient boosting's trees, the input column it reads, and for a
    categorical one the input values behind its internal category codes. With categorical features the model
    ordinal-encodes them itself (unknown values become missing) and puts them first; the trees index that order."""
    n = model.n_features_in_
    if getattr(model, "_preprocessor", None) is None:
        return np.arange(n), [None] * n
    mask = np.asarray(model.is_categorical_, dtype=bool)
    encoder = model._preprocessor.named_transformers_["encoder"]
    original = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
    return original, [*(np.asarray(c, dtype=np.float64) for c in encoder.categories_), *[None] * int((~mask).sum())]


def _left_categories(bitset: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """The input values whose internal codes are set in a node's 256-bit left bitset (8 x uint32, low bit first)."""
    if values is None:
        raise ValueError("a categorical split on a feature the model does not encode as categorical")
    bits = np.unpackbits(np.asarray(bitset, dtype="<u4").view(np.uint8), bitorder="little")
    codes = np.flatnonzero(bits[:len(values)])
    return values[codes]


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
                members = tree.members[i] if tree.members is not None else None
                splits.append(0.0 if members is not None else float(tree.threshold[i]))
                if members is None:
                    modes.append(0)  # BRANCH_LEQ: x <= threshold goes left, as in sklearn
                else:  # BRANCH_MEMBER: a value of the set goes left; the sets follow each other, NaN between
                    modes.append(6)
                    membership += [*members.tolist(), float("nan")]
                missing.append(int(tree.missing_left[i]))
                for child, ids, flags in ((left, true_ids, true_leaf), (right, false_ids, false_leaf)):
                    leaf = bool(tree.is_leaf[child])
                    ids.append(leaf_index[child] if leaf else node_index[child])
                    flags.append(int(leaf))
    sets = {} if not membership else {"membership_values": helper.make_tensor(
        "membership", TensorProto.DOUBLE, [len(membership) - 1], membership[:-1])}
    return dict(
        **sets, aggregate_function=1, n_targets=n_targets, post_transform=0, tree_roots=roots,
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
    _labels(scope, container, probabilities, model.classes_, operator.outputs[0].full_name)
