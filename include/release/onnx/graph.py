"""What several converters share: the output shapes skl2onnx is told, and a classifier's label from its
probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np


def double_probabilities(operator: Any) -> None:
    """skl2onnx's parser may declare a tree classifier's probabilities float, and a calibrated classifier's when its
    input is float (an OrdinalEncoder's codes); ours are double, like the features."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    calculate_linear_classifier_output_shapes(operator)
    operator.outputs[1].type = DoubleTensorType(shape=operator.outputs[1].type.shape)


def labels(scope: Any, container: Any, probabilities: str, labels: np.ndarray, output: str) -> None:
    """The label of each row's most probable class (the first of equals, as numpy's argmax)."""
    from onnx import TensorProto

    index, classes = scope.get_unique_variable_name("index"), scope.get_unique_variable_name("classes")
    container.add_node("ArgMax", [probabilities], [index], axis=1, keepdims=0)
    if labels.dtype.kind in "iub":
        container.add_initializer(classes, TensorProto.INT64, [len(labels)], labels.astype(np.int64).tolist())
    else:
        container.add_initializer(classes, TensorProto.STRING, [len(labels)], [str(c).encode() for c in labels])
    container.add_node("Gather", [classes, index], [output], axis=0)


def same_type_shape(operator: Any) -> None:
    """An imputer's output: its inputs' type (doubles after our encoders, whatever type skl2onnx guessed for their
    output while parsing), their columns side by side."""
    rows = operator.inputs[0].get_first_dimension()
    widths = [variable.type.shape[1] for variable in operator.inputs]
    width = None if None in widths else sum(widths)
    operator.outputs[0].type = type(operator.inputs[0].type)([rows, width])


def width_shape(operator: Any) -> None:
    """A transformer's output: doubles, as many columns as its feature names."""
    from skl2onnx.common.data_types import DoubleTensorType

    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = DoubleTensorType([rows, len(operator.raw_operator.get_feature_names_out())])
