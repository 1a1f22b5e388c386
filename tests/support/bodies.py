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


# Wide bodies: few rows, each far wider than any model (issue 22, finding 6). Before the column and value caps, each
# grew a worker by 230-290 MB, and four at once by 610 MB.
WIDE = ("csv-header", "dataframe_split", "dataframe_records", "inputs")


def wide_body(shape: str) -> tuple[str, str, bytes]:
    """A request of `shape` of just under 10 MB with 0.6-5 million values: (path, content type, body).

    csv-header: a header of 900,000 columns and one row; dataframe_split: 5,000 rows of 1,000 columns;
    dataframe_records: one record of 780,000 keys; inputs: 640,000 columns of one row (columnar).
    """
    if shape == "csv-header":
        count = 900_000
        return "/invocations", "text/csv", (",".join(f"x{i:07d}" for i in range(count)) + "\n" +
                                            ",".join(["0"] * count) + "\n").encode()
    if shape == "dataframe_split":
        columns = json.dumps([f"c{i}" for i in range(1_000)])
        row = "[" + ",".join(["0"] * 1_000) + "]"
        return "/invocations", "application/json", \
            f'{{"dataframe_split":{{"columns":{columns},"data":[{",".join([row] * 5_000)}]}}}}'.encode()
    if shape == "dataframe_records":
        keys = ",".join(f'"c{i:07d}":0' for i in range(780_000))
        return "/invocations", "application/json", f'{{"dataframe_records":[{{{keys}}}]}}'.encode()
    if shape == "inputs":
        keys = ",".join(f'"c{i:07d}":[0]' for i in range(640_000))
        return "/invocations", "application/json", f'{{"inputs":{{{keys}}}}}'.encode()
    raise ValueError(shape)
