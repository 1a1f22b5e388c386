"""Request bodies at the edge of the prediction server's input limits: 10 MB of rows in every shape, deep nesting."""

from __future__ import annotations

import json

from tests.support.bundles import GOOD_ROW

MB10 = 10 * 1024 * 1024 - 4096  # just under SERVING_MAX_BODY_BYTES' default
ROW = json.dumps(GOOD_ROW, separators=(",", ":"))


def repeated(prefix: str, item: str, suffix: str, size: int = MB10, sep: str = ",") -> bytes:
    """`item` repeated to a body of about `size` bytes."""
    count = (size - len(prefix) - len(suffix)) // (len(item) + len(sep))
    return (prefix + sep.join([item] * count) + suffix).encode()


def nested(depth: int, kind: str) -> str:
    """`depth` levels of lists ([[[]]]) or of objects ({"a":{"a":1}})."""
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


SHAPES = ("columnar", "columnar-4", "dataframe_split", "dataframe_records", "instances", "predict-list", "csv")


def large_body(shape: str) -> tuple[str, str, bytes]:
    """A request of `shape` filled to 10 MB, far more than 10,000 rows: (path, content type, body)."""
    if shape == "columnar":  # one column: 5 million rows of 2 bytes
        return "/invocations", "application/json", repeated('{"inputs":{"x1":[', "0", "]}}")
    if shape == "columnar-4":
        columns = ",".join(f'"{name}":[' + ",".join([json.dumps(value)] * 500_000) + "]"
                           for name, value in GOOD_ROW.items())
        return "/invocations", "application/json", ('{"inputs":{' + columns + "}}").encode()
    if shape == "dataframe_split":
        split = f'{{"dataframe_split":{{"columns":{json.dumps(list(GOOD_ROW))},"data":['
        row = json.dumps(list(GOOD_ROW.values()), separators=(",", ":"))
        return "/invocations", "application/json", repeated(split, row, "]}}")
    if shape in ("dataframe_records", "instances"):
        return "/invocations", "application/json", repeated(f'{{"{shape}":[', ROW, "]}")
    if shape == "predict-list":
        return "/predict", "application/json", repeated("[", ROW, "]")
    if shape == "csv":
        return "/invocations", "text/csv", repeated(",".join(GOOD_ROW) + "\n", "0.5,-1.0,3,p", "\n", sep="\n")
    raise ValueError(shape)
