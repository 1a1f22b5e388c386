"""Turn a request body into validated feature columns, or a precise client error.

Every format of the MLflow scoring protocol is normalised to one shape, a
column per feature (numpy arrays in contract order), before the model sees it.
Errors name the field and row and never echo the whole input.

A body is bounded before it is decoded or parsed (check_structure, check_csv):
decoding builds a Python object per value and recurses once per nesting level,
so a 10 MB body could otherwise cost a gigabyte or a RecursionError. Its rows,
columns and values are capped (serving/limits.py). Column-wise formats stay
column-wise: no dict is built per row.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

import msgspec
import numpy as np

from serving.contract import Contract, Feature
from serving.features import UNIX_UNITS, parse_datetimes
from serving.limits import MIN_CONTAINER_ITEMS, Limits

MAX_DETAILS = 20  # an error lists at most this many problems; the count says how many there were
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_MLFLOW_FIELDS = frozenset((*MLFLOW_KEYS, "params"))
# The deepest legitimate body nests 4 levels ({"dataframe_split": {"data": [[...]]}}), params a few more. Both
# parsers recurse once per level and raise RecursionError (a 500) near Python's limit of ~1000 frames, minus the
# frames of the server below them; 32 leaves room for any real request and stays far from that.
MAX_DEPTH = 32
# The rows of every request shape sit in one JSON array or object (a list of records, dataframe_split.data, each
# column of columnar input), so check_structure refuses any container holding more than max_rows items. Containers
# that are not lists of rows (a record, a dataframe_split row, its columns) hold one item per column: the limit is
# never below this many, so a small SERVING_MAX_ROWS does not refuse a wide row (validate counts rows exactly, and
# the columns are counted exactly once the values, which bound what decoding builds, have been).
MAX_COLUMNS = MIN_CONTAINER_ITEMS
# What check_structure reads of a body, a byte per mark: the change of nesting level (-1 as 0xff), a quote as 2.
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'[{]},"')))
_STEPS = bytes.maketrans(b'[{]},"', b"\x01\x01\xff\xff\x00\x02")
_KINDS = bytes.maketrans(b'[{]},"', b"\x01\x03\xff\xff\x00\x02")  # the same, an object's opening as 3
_QUOTE = b"\x02"


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
class Batch:
    """Validated rows as one array per feature, in contract order."""

    columns: dict[str, np.ndarray]
    n_rows: int
    # rows flagged (not rejected) for values outside the schema's range
    warnings: list[dict[str, Any]] = field(default_factory=list)
    contract_hash: str = ""  # the contract these rows were checked against
    # the numeric columns as one [n, k] array (contract order) when validation built them so; else None
    numeric: np.ndarray | None = None
    # the key (id) columns the request sent, each value as sent (None where a row has none); never model input
    keys: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class NumericRows:
    """A `dataframe_split` whose every value msgspec found to be a JSON number while decoding (what MLflow's client
    sends for a numeric DataFrame), its rows as sent. validate() checks it against the contract without a Python
    type check per value or a transposition; anything it cannot take goes the general way, as_columns()."""

    columns: list[str]
    data: list[list[float]]
    body: bytes = b""  # the request body, decoded again when a key column needs its numbers as sent

    def as_columns(self, contract: Contract) -> Columns:
        if self.body and not contract.keys_and_ignored.isdisjoint(self.columns):
            # msgspec made every number a float; a key is recorded as sent (17, not 17.0)
            return mlflow_input(_decode(self.body))
        return _split_columns({"columns": self.columns, "data": self.data})


class _SplitFrame(msgspec.Struct, forbid_unknown_fields=True):
    columns: list[str]
    data: list[list[float]]  # msgspec takes JSON integers too (as floats), never booleans, strings or null


class _NumericSplit(msgspec.Struct, forbid_unknown_fields=True):
    dataframe_split: _SplitFrame


_NUMERIC_SPLIT = msgspec.json.Decoder(_NumericSplit)


def check_structure(body: bytes, limits: Limits) -> None:
    """Refuse a JSON body nested deeper than MAX_DEPTH (400), with more items in one array or object than a
    request has rows or columns, or with more values than `limits` allow (413), undecoded."""
    limit = limits.items
    if len(body) < min(limit, limits.values) and body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return  # too short for that many commas, too few brackets to nest that deep: a request of a few rows
    scan = scan_json(body, limit)
    if scan.deepest > MAX_DEPTH:
        raise InputError(400, "too_deeply_nested", f"the JSON body nests deeper than {MAX_DEPTH} levels")
    if scan.items > limit and scan.in_object:
        raise InputError(413, "too_many_columns", limits.too_many_columns(f"a JSON object holds {scan.items} keys"))
    if scan.items > limit:
        raise InputError(413, "too_many_rows", f"a JSON array or object holds {scan.items} items; the limit is "
                                               f"{limits.rows} rows per request (SERVING_MAX_ROWS raises it)")
    if scan.values > limits.values:
        raise InputError(413, "too_many_values",
                         limits.too_many_values(f"the JSON body holds up to {scan.values} values"))


class Scan(NamedTuple):
    """What scan_json reads of a JSON body's bytes."""

    deepest: int  # the deepest nesting
    items: int  # the most items in one array or object (an empty one counts 1)
    in_object: bool  # that container is an object
    values: int  # commas + 1: the numbers, strings, booleans and nulls (a key with its value once), or more


def nesting_and_items(body: bytes, limit: int = 0) -> tuple[int, int]:
    """The deepest nesting of a JSON body and the most items in one of its arrays or objects (scan_json)."""
    scan = scan_json(body, limit)
    return scan.deepest, scan.items


def scan_json(body: bytes, limit: int = 0) -> Scan:
    """The nesting, the largest container and the values of a JSON body, from its bytes: numpy over the brackets
    and commas outside strings, one byte each; about half the time msgspec takes to decode a valid body, and a few
    times its size in memory at most.

    Depth is exact up to MAX_DEPTH levels (deeper gives MAX_DEPTH + 1, items uncounted), items above `limit`
    (below, 0 may be given). Assumes UTF-8, where every byte of a multi-byte character is >= 0x80. Malformed JSON
    gives the numbers of the part before the fault, as far as a parser reads it.
    """
    steps = _steps_outside_strings(body)
    values = len(steps) - int(np.count_nonzero(steps)) + 1  # commas + 1
    depth = np.cumsum(steps, dtype=np.int8)  # the level after each mark
    # int8 is exact until the level first leaves [0, MAX_DEPTH] (it moves by one), and that is where this stops.
    deepest = int(depth.max(initial=0))
    if deepest > MAX_DEPTH or depth.min(initial=0) < 0:
        first = int(((depth < 0) | (depth > MAX_DEPTH)).argmax())
        if depth[first] > MAX_DEPTH:
            return Scan(MAX_DEPTH + 1, 0, False, values)
        # a bracket closed that was never opened: the parser says where
        return Scan(int(depth[:first].max(initial=0)), 0, False, values)
    if values <= limit:
        return Scan(deepest, 0, False, values)  # fewer commas in all than the limit
    most, where = 0, (0, 0)
    for level in range(1, deepest + 1):
        events = steps[depth == level]
        events = events[events >= 0]  # in order: 1 opens a container at this level, each 0 is one of its commas
        if len(events) - np.count_nonzero(events) >= limit:
            opens = np.flatnonzero(events)
            counts = np.diff(opens, append=len(events))  # commas + 1
            largest = int(counts.argmax())
            if counts[largest] > most:
                most, where = int(counts[largest]), (level, int(opens[largest]))
    in_object = False
    if most > limit:  # which kind of container: the refusal says rows or columns
        kinds = _steps_outside_strings(body, _KINDS)[depth == where[0]]
        in_object = bool(kinds[kinds >= 0][where[1]] == 3)
    return Scan(deepest, most, in_object, values)


def _steps_outside_strings(body: bytes, table: bytes = _STEPS) -> np.ndarray:
    """The brackets and commas of a JSON body outside strings, as level steps: 1 opens, -1 closes, 0 a comma (with
    _KINDS, an object opens with 3)."""
    if b"\\" in body:  # escaped backslashes go first, then escaped quotes: every quote left opens or closes a string
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Marks and quotes only, then adjacent quotes go: a string with no bracket or comma in it (nearly every one)
    # vanishes, and dropping two adjacent quotes never changes which marks are inside a string.
    marks = body.translate(table, _NOT_MARKS).replace(_QUOTE * 2, b"")
    steps = np.frombuffer(marks, dtype=np.int8)
    if _QUOTE not in marks:
        return steps
    quotes = steps == _QUOTE[0]
    inside = np.cumsum(quotes, dtype=np.uint8)  # odd from an opening quote to its closing one (the parity survives
    inside &= 1                                 # the uint8 wrap-around)
    inside |= quotes
    return steps[inside == 0]


def parse_json(body: bytes, limits: Limits) -> Any:
    """The decoded body, once check_structure has found it shallow and small enough to decode."""
    check_structure(body, limits)
    return _decode(body)


def mlflow_json(body: bytes, limits: Limits) -> Any:
    """The rows of a JSON MLflow scoring request: NumericRows for a `dataframe_split` of numbers only (one typed
    decode), else what mlflow_input makes of the decoded body."""
    check_structure(body, limits)
    try:
        frame = _NUMERIC_SPLIT.decode(body).dataframe_split
    except msgspec.DecodeError:  # another shape, another value, or no JSON: the general path tells which
        return mlflow_input(_decode(body), limits.columns)
    _check_columns(len(frame.columns), limits.columns, "dataframe_split.columns")
    return NumericRows(frame.columns, frame.data, body)


def _check_columns(count: int, max_columns: int | None, what: str) -> None:
    if max_columns is not None and count > max_columns:
        raise InputError(413, "too_many_columns", f"{what} has {count} columns; the limit is {max_columns} columns "
                                                  "(SERVING_MAX_COLUMNS raises it)")


def _decode(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    try:
        # The stdlib accepts NaN/Infinity literals (Python clients send them); validation then names the field.
        # UTF-8 only (RFC 8259), as check_structure assumes: json.loads(bytes) would also guess UTF-16 or -32.
        return json.loads(body.decode("utf-8-sig"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(400, "malformed_json", f"the body is not valid JSON: {_short(exc)}") from None


def mlflow_rows(payload: Any) -> tuple[Any, bool]:
    """The rows of an MLflow scoring request as records (a list of dicts), e.g. a model's saved input example."""
    rows = mlflow_input(payload)
    return (rows.records() if isinstance(rows, Columns) else rows), False


def mlflow_input(payload: Any, max_columns: int | None = None) -> Any:
    """The rows of an MLflow scoring request (`dataframe_split`, `dataframe_records`, `instances`, `inputs`):
    records as sent, or Columns for the column-wise formats (at most max_columns of them, else 413)."""
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
        _check_columns(len(value), max_columns, f"columnar {key}")
        return _columnar(value)
    return value


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
                _check_columns(len(row), max_columns, "a CSV row")
    except UnicodeDecodeError:
        raise InputError(400, "malformed_csv", "the CSV body is not UTF-8 text") from None
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
    return Columns(dict(zip(header, map(list, zip(*data)))) if data else {}, len(data))


def _split_columns(value: Any, max_columns: int | None = None) -> Columns:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
            or not isinstance(value.get("data"), list):
        raise InputError(400, "invalid_request", "dataframe_split must be an object with 'columns' and 'data' lists")
    columns, data = value["columns"], value["data"]
    _check_columns(len(columns), max_columns, "dataframe_split.columns")
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


def validate(rows: Any, contract: Contract, *, max_rows: int, out_of_range: str = "reject",
             from_text: bool = False, max_columns: int | None = None) -> Batch:
    """Check rows (one record, a list of records, Columns or NumericRows) against the contract; `out_of_range` is
    "reject" (error) or "flag" (warn in the response). Key (id) and ignored columns are optional: keys are kept
    for capture (Batch.keys), ignored columns dropped; neither reaches the model. A record with more than
    max_columns keys is a 413."""
    if isinstance(rows, NumericRows):
        batch = _numeric_rows(rows, contract, max_rows)
        if batch is not None:
            return batch
        rows = rows.as_columns(contract)
    given = rows if isinstance(rows, Columns) else _record_columns(rows, contract, max_rows, max_columns)
    _check_count(given.n_rows, max_rows)
    # Column-wise input names its columns once: an unknown or missing one is a problem of the column, not of a row.
    problems: list[dict[str, Any]] = []
    if given.values.keys() != set(contract.names):  # the common case skips both checks
        problems = [{"field": _short(name), "problem": "unknown column"}
                    for name in sorted(set(given.values) - contract.accepted)[:MAX_DETAILS]] + \
                   [{"field": f.name, "problem": "missing column"}
                    for f in contract.features if not f.nullable and f.name not in given.values]
    if problems:
        raise _invalid(problems)
    n = given.n_rows
    keys = _keys(contract, given.values, problems) if contract.keys else {}
    numeric = None if from_text else _plain_numbers(contract, given.values)
    plain = {} if numeric is None else dict(zip(contract.numeric_bounds[0], numeric))
    if numeric is not None and len(plain) == len(contract.features) and not problems:
        return Batch(plain, n, [], contract.hash, numeric.T, keys)  # only plain numbers: nothing more to check
    columns, warnings = {}, []
    for feature in contract.features:
        if feature.name in plain:
            columns[feature.name] = plain[feature.name]
            continue
        values = given.values.get(feature.name)
        values = [None] * n if values is None else values  # a missing nullable column is all missing
        if from_text:
            values = [None if v == "" else v for v in values]
        convert = _numeric if feature.is_numeric else _datetime if feature.dtype == "datetime" else _categorical
        columns[feature.name] = convert(feature, values, from_text, out_of_range, problems, warnings)
    if problems:
        raise _invalid(problems)
    return Batch(columns, n, warnings[:MAX_DETAILS], contract.hash, None if numeric is None else numeric.T, keys)


def _keys(contract: Contract, given: dict[str, list[Any]], problems: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The key columns sent, each value text or a finite number as sent (None: the row has none). An object, a
    list or a boolean cannot name a row: a problem of its row."""
    keys = {}
    for name in contract.keys:
        values = given.get(name)
        if values is None:
            continue
        column = []
        for i, v in enumerate(values):
            kind = type(v)
            if kind is float and v != v:
                v = None  # NaN: how pandas spells a missing value
            elif v is not None and (kind not in (str, int, float) or (kind is float and not math.isfinite(v))):
                if len(problems) < MAX_DETAILS:
                    got = "an infinite number" if kind is float else _kind(v)
                    problems.append({"row": i, "field": name, "problem": f"a key is text or a number, got {got}"})
                v = None
            column.append(None if v == "" else v)
        keys[name] = column
    return keys


def _numeric_rows(rows: NumericRows, contract: Contract, max_rows: int) -> Batch | None:
    """The batch of a numbers-only dataframe_split whose columns are the contract's features in its order, every
    value within its bounds (an integer where the feature is one); None for anything else, which validate then
    checks column by column and names."""
    names, bounds = contract.numeric_bounds
    n = len(rows.data)
    if len(names) != len(contract.features) or tuple(rows.columns) != names or not 0 < n <= max_rows:
        return None
    for row in rows.data:
        if len(row) != len(bounds):
            return None
        for v, (lo, hi, integer) in zip(row, bounds):
            if not lo <= v <= hi or (integer and v != int(v)):  # _plain_numbers' test; msgspec checked the type
                return None
    numeric = np.array(rows.data, dtype=np.float64)
    return Batch(dict(zip(names, numeric.T)), n, [], contract.hash, numeric)


def _plain_numbers(contract: Contract, given: dict[str, list[Any]]) -> np.ndarray | None:
    """Every numeric column at once, as one [k, n] array in contract order, when all its values are plain, finite,
    in-range numbers (nearly every request): one pass over the values and one array instead of a dozen numpy calls
    per column, most of a small request's validation. Anything else (None here) is checked column by column, with
    its precise errors."""
    names, bounds = contract.numeric_bounds
    if not names or not all(name in given for name in names):
        return None
    values = [given[name] for name in names]
    for column, (lo, hi, integer) in zip(values, bounds):
        for v in column:
            # NaN and infinity fail the finite bounds; a huge int fails them too, before it meets a float array
            if (type(v) is not float and type(v) is not int) or not lo <= v <= hi or (integer and v != int(v)):
                return None
    return np.array(values, dtype=np.float64)


def _check_count(n_rows: int, max_rows: int) -> None:
    if not n_rows:
        raise InputError(400, "invalid_request", "expected a non-empty list of records (JSON objects)")
    if n_rows > max_rows:
        raise InputError(413, "too_many_rows", f"{n_rows} rows in one request; the limit is {max_rows}")


def _record_columns(records: Any, contract: Contract, max_rows: int, max_columns: int | None = None) -> Columns:
    """Records (JSON objects keyed by column name) as Columns of the contract's features, each row's keys checked."""
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise InputError(400, "invalid_request", "expected a non-empty list of records (JSON objects)")
    _check_count(len(records), max_rows)
    problems: list[dict[str, Any]] = []
    features, known = set(contract.names), contract.accepted
    required = {f.name for f in contract.features if not f.nullable}
    extra = False  # some record has a key or ignored column
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(400, "invalid_request", f"row {i} is not a JSON object keyed by column name",
                             [{"row": i, "problem": f"expected an object, got {_kind(rec)}"}])
        if rec.keys() != features:  # the common case skips the set operations
            _check_columns(len(rec), max_columns, f"row {i}")
            for name in sorted(set(map(str, rec)) - known)[:MAX_DETAILS]:
                problems.append({"row": i, "field": _short(name), "problem": "unknown column"})
            for name in sorted(required - set(rec)):
                problems.append({"row": i, "field": name, "problem": "missing column"})
            extra = extra or not contract.keys_and_ignored.isdisjoint(rec)
    if problems:
        raise _invalid(problems)
    names = contract.names + (tuple(k for k in contract.keys if any(k in rec for rec in records)) if extra else ())
    return Columns({name: [rec.get(name) for rec in records] for name in names}, len(records))


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
    """A category with `allowed` values or an ordinal (its categories): JSON values must match one in type too
    (true is not 1), CSV values match by text. An open category (no `allowed`): text or a finite number, as given
    (the model's encoder treats a value it never saw as unknown)."""
    lookup = None if feature.allowed is None else \
        {str(a) if from_text else (type(a), a): a for a in feature.allowed}
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if type(v) is float and v != v:  # NaN: how pandas and json.dumps spell a missing value
            v = None
        if v is None:
            if not feature.nullable:
                problems.append({"row": i, "field": feature.name,
                                 "problem": "missing value (the column is not nullable)"})
        elif lookup is not None:
            key = v if from_text else (type(v), v) if type(v) in (str, int, float, bool) else None
            if key not in lookup:
                which = "categories" if feature.dtype == "ordinal" else "allowed values"
                problems.append({"row": i, "field": feature.name,
                                 "problem": f"not one of the {which} {list(feature.allowed)[:10]}"})
            v = lookup.get(key)
        elif type(v) is str:
            if "\x00" in v:  # no category holds one; the compiled model's markers for missing values do
                problems.append({"row": i, "field": feature.name, "problem": "text with a NUL character"})
                v = None
        elif type(v) not in (int, float) or not math.isfinite(v):
            got = "an infinite number" if type(v) is float else _kind(v)
            problems.append({"row": i, "field": feature.name, "problem": f"expected text or a number, got {got}"})
            v = None
        out[i] = v
    return out


def _datetime(feature: Feature, values: list[Any], from_text: bool, out_of_range: str,
              problems: list[dict[str, Any]], warnings: list[dict[str, Any]]) -> np.ndarray:
    """Text in the column's format or in ISO 8601 (numbers of seconds or milliseconds for unix / unix_ms), as
    datetime64[ns] in UTC: serving.features.parse_datetimes, the parser of training and batch scoring too."""
    unix = feature.format in UNIX_UNITS
    expected = f"a {feature.format} timestamp (a number)" if unix else \
        f"text in the format {feature.format!r} or ISO 8601" if feature.format else "ISO 8601 text"
    wrong = np.zeros(len(values), dtype=bool)  # a value of the wrong type: reported once, then missing
    if not from_text:
        for i, v in enumerate(values):
            if v is not None and type(v) is not str and not (unix and type(v) in (int, float)):
                wrong[i] = True
        if wrong.any():
            for i in np.flatnonzero(wrong)[:MAX_DETAILS]:
                problems.append({"row": int(i), "field": feature.name,
                                 "problem": f"expected {expected}, got {_kind(values[i])}"})
            values = [None if bad else v for v, bad in zip(values, wrong)]
    moments, invalid = parse_datetimes(values, feature.format)
    for i in np.flatnonzero(invalid)[:MAX_DETAILS]:
        problems.append({"row": int(i), "field": feature.name,
                         "problem": f"not a date-time: expected {expected}, got {_short(values[i])!r}"})
    if not feature.nullable:
        _report(problems, feature, np.flatnonzero(np.isnat(moments) & ~invalid & ~wrong),
                "missing value (the column is not nullable)")
    outside = np.zeros(len(moments), dtype=bool)
    if feature.min is not None:
        outside |= moments < np.datetime64(feature.min, "ns")
    if feature.max is not None:
        outside |= moments > np.datetime64(feature.max, "ns")
    if outside.any():  # NaT compares False
        problem = f"outside the schema's range [{feature.min or '-inf'}, {feature.max or 'inf'}]"
        _report(problems if out_of_range == "reject" else warnings, feature, np.flatnonzero(outside), problem)
    return moments


def _report(target: list[dict[str, Any]], feature: Feature, rows: Iterable[int], problem: str) -> None:
    for i in list(rows)[:MAX_DETAILS]:
        target.append({"row": int(i), "field": feature.name, "problem": problem})


def _invalid(problems: list[dict[str, Any]]) -> InputError:
    rows = len({p["row"] for p in problems if "row" in p})
    first = problems[0]
    where = f"row {first['row']}, " if "row" in first else ""
    return InputError(422, "invalid_input",
                      f"{len(problems)} problem(s)" + (f" in {rows} row(s)" if rows else "") +
                      f"; first: {where}field {first.get('field')!r}: {first['problem']}", problems[:MAX_DETAILS])


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
