"""Turn a request body (JSON or CSV bytes) into rows, or a precise client error; validation is serving/inputs.py.

JSON is decoded by msgspec into typed request shapes (`Decoders`, built once per set of request limits) whose
`msgspec.Meta` lengths are the limits: rows per request (SERVING_MAX_ROWS), columns per row (SERVING_MAX_COLUMNS).
A value that is not a JSON scalar, an unknown shape or a malformed body is decoded again untyped, only to name the
problem as validation does. Decoding builds a Python object per value and msgspec checks a container's length once
it has built it, so a body is first bounded by its commas (its values, SERVING_MAX_VALUES): a 10 MB body of
millions of values is refused without building anything. Column-wise formats stay column-wise: no dict per row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType, defstruct

from serving.limits import Limits

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_MLFLOW_FIELDS = frozenset((*MLFLOW_KEYS, "params"))
# The deepest legitimate body nests 4 levels ({"dataframe_split": {"data": [[...]]}}), params a few more. The typed
# shapes nest no deeper than that; an untyped decode (params, or a body of another shape) is refused past 32.
MAX_DEPTH = 32
Scalar = Union[str, int, float, bool, None]
_TOO_DEEP = object()
_LENGTH = re.compile(r"Expected `(array|object)` of length <= \d+(?: - at `(.*)`)?$")


class InputError(Exception):
    """A client error, answered as JSON {"error": {"code", "message", "details"}} with `status`."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


@dataclass
class Columns:
    """Rows given column by column (columnar `inputs`/`instances`, `dataframe_split`, CSV), all of one length."""

    values: dict[str, list[Any]]
    n_rows: int

    def records(self) -> list[dict[str, Any]]:
        return [{name: column[i] for name, column in self.values.items()} for i in range(self.n_rows)]


@dataclass
class NumericRows:
    """A `dataframe_split` whose every value msgspec found to be a JSON number while decoding (what MLflow's client
    sends for a numeric DataFrame), its rows as sent. Validation checks it against the contract without a Python
    type check per value or a transposition; anything it cannot take goes the general way, as_columns()."""

    columns: list[str]
    data: list[list[float]]
    body: bytes = b""  # the request body, decoded again when a key column needs its numbers as sent

    def as_columns(self, keys_and_ignored: frozenset[str]) -> Columns:
        if self.body and not keys_and_ignored.isdisjoint(self.columns):
            # msgspec made every number a float; a key is recorded as sent (17, not 17.0)
            return mlflow_input(decode_any(self.body))
        return _split_columns({"columns": self.columns, "data": self.data})


@dataclass(frozen=True)
class Decoders:
    """The typed decoders of one set of request limits: the numbers-only `dataframe_split` (the fast path), any
    MLflow scoring request, and /predict's record or list of records."""

    numeric_split: msgspec.json.Decoder[Any]
    mlflow: msgspec.json.Decoder[Any]
    records: msgspec.json.Decoder[Any]


@lru_cache(maxsize=16)
def decoders(limits: Limits) -> Decoders:
    """Built once per set of limits (serving.limits.request_limits caches those per model width): each row list
    holds at most limits.rows items, each row, record, header and column-wise object at most limits.columns."""
    rows, columns = Meta(max_length=limits.rows), Meta(max_length=limits.columns)
    record = Annotated[dict[str, Scalar], columns]
    records = Annotated[list[record], rows]  # type: ignore[valid-type]
    column_wise = Annotated[dict[str, Annotated[list[Scalar], rows]], columns]
    names = Annotated[list[str], columns]
    strict = {"forbid_unknown_fields": True}
    # JSON integers decode as floats too; booleans, strings and null never do
    numeric_frame = defstruct("NumericFrame", [("columns", names), ("data", Annotated[
        list[Annotated[list[float], columns]], rows])], **strict)
    frame = defstruct("Frame", [("columns", names), ("data", Annotated[list[Annotated[list[Scalar], columns]], rows])],
                      **strict)
    either = Union[records, column_wise, UnsetType]  # type: ignore[valid-type]
    request = defstruct("Request", [("dataframe_split", Union[frame, UnsetType], UNSET),
                                    ("dataframe_records", Union[records, record, UnsetType], UNSET),
                                    ("instances", either, UNSET), ("inputs", either, UNSET),
                                    ("params", Union[dict[str, Any], UnsetType], UNSET)], **strict)
    return Decoders(msgspec.json.Decoder(defstruct("NumericSplit", [("dataframe_split", numeric_frame)], **strict)),
                    msgspec.json.Decoder(request), msgspec.json.Decoder(Union[records, record]))


def mlflow_json(body: bytes, limits: Limits) -> Any:
    """The rows of a JSON MLflow scoring request: NumericRows for a `dataframe_split` of numbers only, Columns for
    the column-wise formats, else the records as sent."""
    check_values(body, limits)
    typed = decoders(limits)
    try:
        frame = typed.numeric_split.decode(body).dataframe_split
        return NumericRows(frame.columns, frame.data, body)
    except msgspec.ValidationError as exc:
        _refuse_length(exc, limits)
    except (msgspec.DecodeError, RecursionError):
        pass  # another shape, another value, or no JSON: the general decoder tells which
    try:
        request = typed.mlflow.decode(body)
    except msgspec.ValidationError as exc:
        _refuse_length(exc, limits)
        return mlflow_input(decode_any(body), limits.columns)  # to name the problem
    except (msgspec.DecodeError, RecursionError):
        return mlflow_input(decode_any(body), limits.columns)
    given = [key for key in MLFLOW_KEYS if getattr(request, key) is not UNSET]
    if len(given) != 1 or (request.params is not UNSET and _depth(request.params) >= MAX_DEPTH):
        return mlflow_input(decode_any(body), limits.columns)
    return _rows(given[0], getattr(request, given[0]))


def parse_json(body: bytes, limits: Limits) -> Any:
    """/predict's body: one record or a list of records (JSON objects keyed by column name), as sent."""
    check_values(body, limits)
    try:
        return decoders(limits).records.decode(body)
    except msgspec.ValidationError as exc:
        _refuse_length(exc, limits)
    except (msgspec.DecodeError, RecursionError):
        pass
    return decode_any(body)  # validation names what is wrong with it


def check_values(body: bytes, limits: Limits) -> None:
    """Refuse a JSON body with more values than limits.values (413), undecoded. Its values (numbers, strings,
    booleans, nulls; a key and its value once) are at most its commas + 1, commas inside strings counted too, so
    the count is never low."""
    if len(body) <= limits.values:
        return  # every value but the last takes a comma and a byte
    values = body.count(b",") + 1
    if values > limits.values:
        raise InputError(413, "too_many_values", limits.too_many_values(f"the JSON body holds up to {values} values"))


def _refuse_length(exc: msgspec.ValidationError, limits: Limits) -> None:
    """A 413 for a container longer than its Meta limit: a list of rows or a column (rows), a record, a row, a
    header or a column-wise object (columns). Other validation errors return."""
    found = _LENGTH.match(str(exc))
    if found is None:
        return
    kind, path = found.group(1), found.group(2) or "$"
    if kind == "array" and not (path.endswith(".columns") or (path.endswith("]") and not path.endswith("[...]"))):
        raise InputError(413, "too_many_rows", f"more than {limits.rows} rows in one request; the limit is "
                                               f"{limits.rows} (SERVING_MAX_ROWS raises it)")
    what = "dataframe_split.columns" if path.endswith(".columns") else "a row" if kind == "array" else \
        "columnar input" if path in ("$.inputs", "$.instances") else "a record"
    raise InputError(413, "too_many_columns", limits.too_many_columns(f"{what} has more than {limits.columns} "
                                                                      "columns"))


def _rows(key: str, value: Any) -> Any:
    if key == "dataframe_split":
        return _split_columns({"columns": value.columns, "data": value.data})
    if key in ("instances", "inputs") and isinstance(value, dict):
        return _columnar(value)
    return value


def decode_any(body: bytes) -> Any:
    """The body decoded untyped (msgspec; the stdlib for NaN/Infinity literals), at most MAX_DEPTH levels deep."""
    try:
        payload = _untyped(body)
    except RecursionError:  # both decoders stop near Python's recursion limit, far past MAX_DEPTH
        payload = _TOO_DEEP
    if payload is _TOO_DEEP or _depth(payload) > MAX_DEPTH:
        raise InputError(400, "too_deeply_nested", f"the JSON body nests deeper than {MAX_DEPTH} levels")
    return payload


def _untyped(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    try:
        # The stdlib accepts NaN/Infinity literals (Python clients send them); validation then names the field.
        # UTF-8 only (RFC 8259): json.loads(bytes) would also guess UTF-16 or -32.
        return json.loads(body.decode("utf-8-sig"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(400, "malformed_json", f"the body is not valid JSON: {short(exc)}") from None


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a decoded value (a scalar: 0), without recursion; stops past MAX_DEPTH."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        level.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return deepest


def mlflow_rows(payload: Any) -> tuple[Any, bool]:
    """The rows of an MLflow scoring request as records (a list of dicts), e.g. a model's saved input example."""
    rows = mlflow_input(payload)
    return (rows.records() if isinstance(rows, Columns) else rows), False


def mlflow_input(payload: Any, max_columns: int | None = None) -> Any:
    """The rows of an untyped MLflow scoring request (`dataframe_split`, `dataframe_records`, `instances`,
    `inputs`): records as sent, or Columns for the column-wise formats (at most max_columns of them, else 413)."""
    if not isinstance(payload, dict):
        raise InputError(400, "invalid_request", f"expected a JSON object with one of {', '.join(MLFLOW_KEYS)}")
    keys = [k for k in MLFLOW_KEYS if k in payload]
    if len(keys) != 1 or not payload.keys() <= _MLFLOW_FIELDS:
        raise InputError(400, "invalid_request",
                         f"expected exactly one of {', '.join(MLFLOW_KEYS)} (and optionally params); "
                         f"got keys {sorted(map(str, payload))[:10]}")
    if "params" in payload and not isinstance(payload["params"], dict):
        raise InputError(400, "invalid_request", "params must be a JSON object")
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        return _split_columns(value, max_columns)
    if key in ("instances", "inputs") and isinstance(value, dict):
        check_columns(len(value), max_columns, f"columnar {key}")
        return _columnar(value)
    return value


def check_columns(count: int, max_columns: int | None, what: str) -> None:
    if max_columns is not None and count > max_columns:
        raise InputError(413, "too_many_columns", f"{what} has {count} columns; the limit is {max_columns} columns "
                                                  "(SERVING_MAX_COLUMNS raises it)")


def _split_columns(value: Any, max_columns: int | None = None) -> Columns:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
            or not isinstance(value.get("data"), list):
        raise InputError(400, "invalid_request", "dataframe_split must be an object with 'columns' and 'data' lists")
    columns, data = value["columns"], value["data"]
    check_columns(len(columns), max_columns, "dataframe_split.columns")
    if set(map(type, columns)) - {str} or len(set(columns)) != len(columns):
        raise InputError(400, "invalid_request", "dataframe_split.columns must be distinct strings")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InputError(400, "invalid_request",
                             f"dataframe_split.data row {i} must be a list of {len(columns)} values",
                             [{"row": i, "problem": "wrong number of values"}])
    return Columns(dict(zip(columns, map(list, zip(*data)))) if data else {}, len(data))


def _columnar(value: dict[str, Any]) -> Columns:
    lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
    if -1 in lengths or len(lengths) > 1:
        raise InputError(400, "invalid_request", "columnar input must map each column to a list, all of one length")
    return Columns(value, lengths.pop() if lengths else 0)


def check_csv(body: bytes, limits: Limits) -> None:
    """Refuse a CSV body whose header has more fields than limits.columns, or with more fields in all than
    limits.values (413), unparsed: its commas are counted, quoted ones too (so a count is never too low)."""
    end = len(body)
    for newline in (b"\n", b"\r"):  # the header's first line
        at = body.find(newline, 0, end)
        end = end if at < 0 else at
    header = body.count(b",", 0, end) + 1
    if header > limits.columns:
        raise InputError(413, "too_many_columns", limits.too_many_columns(f"the CSV header has {header} fields"))
    if len(body) < limits.values:
        return  # at most one field more than bytes
    # The fields: one per comma and one per line (a blank line counts too), line breaks \n, \r\n or \r
    lines = body.count(b"\n") + body.count(b"\r") - body.count(b"\r\n")
    fields = body.count(b",") + lines + (not body.endswith((b"\n", b"\r")))
    if fields <= limits.values:
        return
    if lines > limits.rows + 1:
        raise InputError(413, "too_many_rows", f"more than {limits.rows} rows in one request; the limit is "
                                               f"{limits.rows} (SERVING_MAX_ROWS raises it)")
    raise InputError(413, "too_many_values", limits.too_many_values(f"the CSV body holds up to {fields} fields"))


def csv_rows(body: bytes, limits: Limits) -> Columns:
    """The rows of a CSV body with a header row (check_csv first), read lazily up to one row past limits.rows, or
    a row longer than limits.columns (then 413)."""
    check_csv(body, limits)
    max_rows, max_columns = limits.rows, limits.columns
    # Decoded as it is read, so no text copy of the whole body (a StringIO would hold 4 bytes per character).
    lines = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8-sig", newline="")
    rows: list[list[str]] = []
    try:
        for row in csv.reader(lines):
            if row:
                rows.append(row)
            if len(rows) > max_rows + 1:  # the header and one row too many
                raise InputError(413, "too_many_rows", f"more than {max_rows} rows in one request; "
                                                       f"the limit is {max_rows} (SERVING_MAX_ROWS raises it)")
            if len(row) > max_columns:  # a quoted line break can hide a header's width from check_csv
                check_columns(len(row), max_columns, "a CSV row")
    except UnicodeDecodeError:
        raise InputError(400, "malformed_csv", "the CSV body is not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(400, "malformed_csv", f"the CSV body cannot be parsed: {short(exc)}") from None
    if not rows:
        raise InputError(400, "malformed_csv", "the CSV body is empty; expected a header row and data rows")
    header, data = rows[0], rows[1:]
    for i, row in enumerate(data):
        if len(row) != len(header):
            raise InputError(400, "malformed_csv",
                             f"data row {i} has {len(row)} fields, the header has {len(header)}",
                             [{"row": i, "problem": "field count differs from the header"}])
    return Columns(dict(zip(header, map(list, zip(*data)))) if data else {}, len(data))


def short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
