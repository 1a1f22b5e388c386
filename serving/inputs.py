"""Turn a request body into validated feature columns, or a precise client error.

Every format of the MLflow scoring protocol is normalised to one shape, a
column per feature (numpy arrays in contract order), before the model sees it.
Errors name the field and row and never echo the whole input.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgspec
import numpy as np

from serving.contract import Contract, Feature

MAX_DETAILS = 20  # an error lists at most this many problems; the count says how many there were
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class InputError(Exception):
    """A client error, answered as JSON {"error": {"code", "message", "details"}} with `status`."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


@dataclass
class Batch:
    """Validated rows as one array per feature, in contract order."""

    columns: dict[str, np.ndarray]
    n_rows: int
    # rows flagged (not rejected) for values outside the schema's range
    warnings: list[dict[str, Any]] = field(default_factory=list)
    contract_hash: str = ""  # the contract these rows were checked against


def parse_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    try:
        # The stdlib accepts NaN/Infinity literals (Python clients send them); validation then names the field.
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(400, "malformed_json", f"the body is not valid JSON: {_short(exc)}") from None


def mlflow_rows(payload: Any) -> tuple[Any, bool]:
    """The rows of an MLflow scoring request (`dataframe_split`, `dataframe_records`, `instances`, `inputs`)."""
    if not isinstance(payload, dict):
        raise InputError(400, "invalid_request", f"expected a JSON object with one of {', '.join(MLFLOW_KEYS)}")
    keys = [k for k in MLFLOW_KEYS if k in payload]
    extra = sorted(set(payload) - set(MLFLOW_KEYS) - {"params"})
    if len(keys) != 1 or extra:
        raise InputError(400, "invalid_request",
                         f"expected exactly one of {', '.join(MLFLOW_KEYS)} (and optionally params); "
                         f"got keys {sorted(map(str, payload))[:10]}")
    if "params" in payload and not isinstance(payload["params"], dict):
        raise InputError(400, "invalid_request", "params must be a JSON object")
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        return _split_to_records(value), False
    if key in ("instances", "inputs") and isinstance(value, dict):
        return _columnar_to_records(value), False
    return value, False


def csv_rows(body: bytes) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(400, "malformed_csv", "the CSV body is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [r for r in reader if r]
    except csv.Error as exc:
        raise InputError(400, "malformed_csv", f"the CSV body cannot be parsed: {_short(exc)}") from None
    if not rows:
        raise InputError(400, "malformed_csv", "the CSV body is empty; expected a header row and data rows")
    header, data = rows[0], rows[1:]
    for i, row in enumerate(data):
        if len(row) != len(header):
            raise InputError(400, "malformed_csv",
                             f"data row {i} has {len(row)} fields, the header has {len(header)}",
                             [{"row": i, "problem": "field count differs from the header"}])
    return [dict(zip(header, row)) for row in data]


def _split_to_records(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
            or not isinstance(value.get("data"), list):
        raise InputError(400, "invalid_request", "dataframe_split must be an object with 'columns' and 'data' lists")
    columns = value["columns"]
    if len(set(map(str, columns))) != len(columns) or not all(isinstance(c, str) for c in columns):
        raise InputError(400, "invalid_request", "dataframe_split.columns must be distinct strings")
    records = []
    for i, row in enumerate(value["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InputError(400, "invalid_request",
                             f"dataframe_split.data row {i} must be a list of {len(columns)} values",
                             [{"row": i, "problem": "wrong number of values"}])
        records.append(dict(zip(columns, row)))
    return records


def _columnar_to_records(value: dict[str, Any]) -> list[dict[str, Any]]:
    lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
    if -1 in lengths or len(lengths) > 1:
        raise InputError(400, "invalid_request", "columnar input must map each column to a list, all of one length")
    n = lengths.pop() if lengths else 0
    names = list(value)
    return [{name: value[name][i] for name in names} for i in range(n)]


def validate(records: Any, contract: Contract, *, max_rows: int, out_of_range: str = "reject",
             from_text: bool = False) -> Batch:
    """Check rows against the contract; `out_of_range` is "reject" (error) or "flag" (warn in the response)."""
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise InputError(400, "invalid_request", "expected a non-empty list of records (JSON objects)")
    if len(records) > max_rows:
        raise InputError(413, "too_many_rows", f"{len(records)} rows in one request; the limit is {max_rows}")
    problems: list[dict[str, Any]] = []
    known = set(contract.names)
    required = {f.name for f in contract.features if not f.nullable}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(400, "invalid_request", f"row {i} is not a JSON object keyed by column name",
                             [{"row": i, "problem": f"expected an object, got {_kind(rec)}"}])
        if rec.keys() != known:  # the common case skips both set operations
            for name in sorted(set(map(str, rec)) - known)[:MAX_DETAILS]:
                problems.append({"row": i, "field": _short(name), "problem": "unknown column"})
            for name in sorted(required - set(rec)):
                problems.append({"row": i, "field": name, "problem": "missing column"})
    if problems:
        raise _invalid(problems)
    n = len(records)
    columns, warnings = {}, []
    for feature in contract.features:
        values = [rec.get(feature.name) for rec in records]
        if from_text:
            values = [None if v == "" else v for v in values]
        convert = _numeric if feature.is_numeric else _categorical
        columns[feature.name] = convert(feature, values, from_text, out_of_range, problems, warnings)
    if problems:
        raise _invalid(problems)
    return Batch(columns, n, warnings[:MAX_DETAILS], contract.hash)


def _numeric(feature: Feature, values: list[Any], from_text: bool, out_of_range: str,
             problems: list[dict[str, Any]], warnings: list[dict[str, Any]]) -> np.ndarray:
    # A value of the wrong type is reported once and counted as 0.0 below, not also as missing or NaN.
    if from_text:
        parsed = []
        for i, v in enumerate(values):
            try:
                parsed.append(None if v is None else float(v))
            except ValueError:
                problems.append({"row": i, "field": feature.name, "problem": f"expected a number, got {_short(v)}"})
                parsed.append(0.0)
        values = parsed
    else:
        wrong = [i for i, v in enumerate(values) if type(v) is not float and type(v) is not int and v is not None]
        for i in wrong[:MAX_DETAILS]:
            problems.append({"row": i, "field": feature.name,
                             "problem": f"expected a number, got {_kind(values[i])}"})
        for i in wrong:
            values[i] = 0.0
    try:
        arr = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    except OverflowError:  # an integer too large for a float
        problems.append({"field": feature.name, "problem": "number out of the representable range"})
        return np.zeros(len(values))
    missing = np.array([v is None for v in values]) if None in values else None
    if missing is not None and not feature.nullable:
        _report(problems, feature, np.flatnonzero(missing), "missing value (the column is not nullable)")
    if feature.nullable:  # NaN is how pandas and json.dumps spell a missing value
        _report(problems, feature, np.flatnonzero(np.isinf(arr)), "infinite values are not allowed")
    else:
        bad = ~np.isfinite(arr) if missing is None else ~np.isfinite(arr) & ~missing
        _report(problems, feature, np.flatnonzero(bad), "NaN or infinite values are not allowed")
    finite = np.where(np.isfinite(arr), arr, 0.0)
    if feature.dtype == "int":
        _report(problems, feature, np.flatnonzero(finite != np.round(finite)), "expected an integer")
    outside = np.zeros(len(arr), dtype=bool)
    if feature.min is not None:
        outside |= np.isfinite(arr) & (arr < feature.min)
    if feature.max is not None:
        outside |= np.isfinite(arr) & (arr > feature.max)
    if outside.any():
        lo = "-inf" if feature.min is None else f"{feature.min:g}"
        hi = "inf" if feature.max is None else f"{feature.max:g}"
        problem = f"outside the schema's range [{lo}, {hi}]"
        _report(problems if out_of_range == "reject" else warnings, feature, np.flatnonzero(outside), problem)
    return arr


def _categorical(feature: Feature, values: list[Any], from_text: bool, out_of_range: str,
                 problems: list[dict[str, Any]], warnings: list[dict[str, Any]]) -> np.ndarray:
    # JSON values must match an allowed value in type too (true is not 1); CSV values match by text.
    lookup = None if feature.allowed is None else \
        {str(a) if from_text else (type(a), a): a for a in feature.allowed}
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if v is None:
            if not feature.nullable:
                problems.append({"row": i, "field": feature.name,
                                 "problem": "missing value (the column is not nullable)"})
        elif lookup is not None:
            key = v if from_text else (type(v), v) if type(v) in (str, int, float, bool) else None
            if key not in lookup:
                problems.append({"row": i, "field": feature.name,
                                 "problem": f"not one of the allowed values {list(feature.allowed)[:10]}"})
            v = lookup.get(key)
        elif not isinstance(v, str):
            problems.append({"row": i, "field": feature.name, "problem": f"expected a string, got {_kind(v)}"})
        out[i] = v
    return out


def _report(target: list[dict[str, Any]], feature: Feature, rows: Iterable[int], problem: str) -> None:
    for i in list(rows)[:MAX_DETAILS]:
        target.append({"row": int(i), "field": feature.name, "problem": problem})


def _invalid(problems: list[dict[str, Any]]) -> InputError:
    rows = len({p.get("row") for p in problems})
    first = problems[0]
    where = f"row {first['row']}, " if "row" in first else ""
    return InputError(422, "invalid_input",
                      f"{len(problems)} problem(s) in {rows} row(s); first: {where}field "
                      f"{first.get('field')!r}: {first['problem']}", problems[:MAX_DETAILS])


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
