"""Check a request's rows against the served model's contract: validated feature columns, or a precise client error.

Rows come from serving/body.py (records, Columns or NumericRows), already within the request limits' rows and
columns. Every format is checked into one shape, a column per feature (numpy arrays in contract order), before the
model sees it. Errors name the field and row and never echo the whole input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from serving.body import Columns, InputError, NumericRows, check_columns, short
from serving.contract import Contract, Feature
from serving.features import UNIX_UNITS, parse_datetimes

MAX_DETAILS = 20  # an error lists at most this many problems; the count says how many there were


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
        rows = rows.as_columns(contract.keys_and_ignored)
    given = rows if isinstance(rows, Columns) else _record_columns(rows, contract, max_rows, max_columns)
    _check_count(given.n_rows, max_rows)
    # Column-wise input names its columns once: an unknown or missing one is a problem of the column, not of a row.
    problems: list[dict[str, Any]] = []
    if given.values.keys() != set(contract.names):  # the common case skips both checks
        problems = [{"field": short(name), "problem": "unknown column"}
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
            check_columns(len(rec), max_columns, f"row {i}")
            for name in sorted(set(map(str, rec)) - known)[:MAX_DETAILS]:
                problems.append({"row": i, "field": short(name), "problem": "unknown column"})
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
                problems.append({"row": i, "field": feature.name, "problem": f"expected a number, got {short(v)}"})
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
                         "problem": f"not a date-time: expected {expected}, got {short(values[i])!r}"})
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

