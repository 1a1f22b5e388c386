"""serving.features.DatetimeFeatures on seconds since 1970: the calendar by whole-number arithmetic, exact in
double, and a cyclical part's sine and cosine from the transformer's own table."""

from __future__ import annotations

from typing import Any

import numpy as np


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


def convert_datetime(scope: Any, operator: Any, container: Any) -> None:
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
