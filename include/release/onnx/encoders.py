"""SimpleImputer and the encoders of text (ordinal, target, one-hot) as lookups of what the fitted step itself
outputs, a missing category as serving.engine.MISSING_CATEGORY and a number as NOT_TEXT."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.engine import MISSING_CATEGORY, NOT_TEXT, model_frame


def convert_imputer(scope: Any, operator: Any, container: Any) -> None:
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


def _encoder_blocks(encoder: Any) -> list[int]:
    """How many output columns each input column of an encoder fills (in order: each encodes its columns apart)."""
    from sklearn.preprocessing import OneHotEncoder, TargetEncoder

    if isinstance(encoder, OneHotEncoder):
        return list(encoder._n_features_outs)
    if isinstance(encoder, TargetEncoder) and encoder.target_type_ == "multiclass":
        return [len(encoder.classes_)] * len(encoder.categories_)
    return [1] * len(encoder.categories_)


def convert_lookup(scope: Any, operator: Any, container: Any) -> None:
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
