"""CalibratedClassifierCV (one calibrated classifier) as scikit-learn computes it: the classifier's scores, each
class's sigmoid or isotonic calibrator, the normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np

from include.release.onnx.graph import labels


def convert_calibrated(scope: Any, operator: Any, container: Any) -> None:
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
    labels(scope, container, probabilities, model.classes_, operator.outputs[0].full_name)


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
