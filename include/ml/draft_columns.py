"""What `python main.py init` drafts for each column of the table: its role, dtype, missing values and what it
may hold (include/ml/drafting.py's docstring has the rules); the target's spec from its rows with a value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from include.ml.draft_dates import datetime_format, datetime_range, epoch_format
from include.ml.draft_ordinals import ordinal_scale
from include.ml.draft_ranges import number_range
from serving.features import parse_datetimes

MAX_CATEGORIES = 50        # a text column with at most this many distinct values lists them in `allowed` ...
MAX_CATEGORY_SHARE = 0.5   # ... and with more distinct values than this share of its non-null rows is free text
MIN_ID_ROWS = 20           # a column distinct on every row is an id only in a table at least this long
ID_WORDS = ("id", "uuid", "guid", "key")
ID_NAMES = ("index", "unnamed: 0")
SPEC_KEYS = ("dtype", "role", "nullable", "max_null_fraction", "format", "min", "max", "allowed", "categories",
             "encoding")  # the order a column's keys are written in


@dataclass
class DraftedColumn:
    name: str
    spec: dict[str, Any]  # its mapping in schema.yaml
    guess: str            # what was inferred, for the comment
    distinct: int
    group: str            # where the summary lists it (GROUPS)


def _words(name: str) -> list[str]:
    """The lower-case words of a column name: `sched_dep_time` and `SchedDepTime` -> sched, dep, time."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _is_text(column: pd.Series) -> bool:
    return isinstance(column.dtype, pd.StringDtype) or column.dtype == object


def _is_bool(column: pd.Series, values: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(column) or (
        len(values) > 0 and all(isinstance(v, (bool, np.bool_)) for v in values.unique()))


def _nulls(spec: dict[str, Any], notes: list[str], column: pd.Series, labelled: pd.Series) -> None:
    """nullable and max_null_fraction from the larger of the file's and the rows with a target's missing share."""
    missing = int(column.isna().sum())
    if not missing:
        return
    share = max(missing / len(column), float(labelled.isna().mean()) if len(labelled) else 0.0)
    limit = min(2 * share, share + (1 - share) / 2)
    spec["nullable"] = True
    spec["max_null_fraction"] = max(0.05, min(0.99, math.ceil(round(100 * limit, 9)) / 100))
    notes.append(f"{missing} of {len(column)} missing")


def draft_column(name: str, column: pd.Series, labelled: pd.Series) -> DraftedColumn:
    """A feature column's spec: role, dtype, what it may hold (the rules: include/ml/drafting.py's docstring)."""
    values = column.dropna()
    distinct = int(values.nunique())
    is_int, is_float = pd.api.types.is_integer_dtype(column), pd.api.types.is_float_dtype(column)
    text = _is_text(column) and not _is_bool(column, values)
    spec: dict[str, Any] = {}
    notes: list[str] = []

    def done(group: str) -> DraftedColumn:
        _nulls(spec, notes, column, labelled)
        ordered = {key: spec[key] for key in SPEC_KEYS if key in spec}
        return DraftedColumn(name, ordered, ", ".join(notes), distinct, group)

    words = _words(name)
    kind = "text" if text else "int" if is_int else "float" if is_float else "bool"
    dtype = {"text": "string", "int": "int", "float": "float", "bool": "category"}[kind]
    if distinct == 1 and len(values) == len(column):
        spec |= {"dtype": dtype, "role": "ignore"}
        notes.append(f"constant {plain_value(values.iloc[0])!r}: nothing to learn")
        return done("ignored")
    if kind in ("int", "float") and (epoch := epoch_format(name, values)) is not None:
        spec |= {"dtype": "datetime", "format": epoch}
        notes.append(f"epoch {'seconds' if epoch == 'unix' else 'milliseconds'} named like a time")
        notes.append(datetime_range(spec, parse_datetimes(values, epoch)[0]))
        return done("datetimes")
    id_name = (bool(words) and words[-1] in ID_WORDS) or name.strip().lower() in ID_NAMES
    # distinct on every row: an int, or text without spaces (text with spaces is free text, e.g. names)
    unique = distinct == len(column) and len(column) >= MIN_ID_ROWS and (
        kind == "int" or text and not values.astype(str).str.contains(r"\s").any())
    if unique and not (text and datetime_format(values)):
        spec |= {"dtype": dtype, "role": "id"}
        notes.append(f"a distinct value on each of the {len(column)} rows")
        return done("ids")
    if id_name and distinct > MAX_CATEGORIES:
        spec |= {"dtype": dtype, "role": "id"}
        notes.append(f"an id-like name, {distinct} distinct values")
        return done("ids")
    if id_name:
        notes.append(f"an id-like name but only {distinct} values: kept as a feature")
    if kind == "bool":
        spec |= {"dtype": "category", "allowed": sorted({bool(v) for v in values})}
        notes.append("true/false values")
        return done("categories")
    if kind in ("int", "float"):
        spec["dtype"] = dtype
        if values.size and is_float and column.isna().any() and bool((values == values.round()).all()):
            notes.append("whole numbers with missing values, kept float")
        finite = values[np.isfinite(values.astype(float))]
        if len(finite):
            integral = bool((finite == finite.round()).all())
            hhmm = integral and bool(words) and words[-1] == "time" and bool((finite % 100 < 60).all())
            spec["min"], spec["max"], note = number_range(words, float(finite.min()), float(finite.max()), is_int,
                                                           integral, hhmm)
            notes.append(note)
        else:
            notes.append("no finite values: review or drop the column")
        return done("numbers")
    # text
    if (found := datetime_format(values)) is not None:
        fmt, note = found
        spec["dtype"] = "datetime"
        if fmt is not None:
            spec["format"] = fmt
        notes.append(note)
        notes.append(datetime_range(spec, parse_datetimes(values, fmt)[0]))
        return done("datetimes")
    share = distinct / len(values)
    if distinct <= MAX_CATEGORIES and share <= MAX_CATEGORY_SHARE:
        observed = [str(v) for v in values.unique()]
        if (ordered := ordinal_scale(observed)) is not None:
            categories, scale = ordered
            spec |= {"dtype": "ordinal", "categories": categories}
            notes.append(f"ordinal: {distinct} values of a known scale ({scale}) in {len(values)} rows; confirm the "
                         "order")
            return done("ordinal")
        spec |= {"dtype": "category", "allowed": sorted({plain_value(v) for v in values},
                                                         key=lambda v: (isinstance(v, str), v))}
        notes.append(f"{distinct} distinct values in {len(values)} rows")
        return done("categories")
    if share <= MAX_CATEGORY_SHARE:
        spec["dtype"] = "category"
        notes.append(f"{distinct} distinct values in {len(values)} rows: an open set, any value accepted")
        return done("categories")
    spec |= {"dtype": "string", "role": "ignore"}
    notes.append(f"free text: {distinct} distinct values in {len(values)} rows")
    return done("ignored")


def draft_target(name: str, values: pd.Series, had_missing: bool) -> DraftedColumn:
    """The target's spec, from its rows with a value (it is never nullable: rows without one are dropped)."""
    distinct = int(values.nunique())
    spec: dict[str, Any] = {}
    notes: list[str] = []
    if _is_bool(values, values):
        spec |= {"dtype": "category", "allowed": sorted({bool(v) for v in values})}
        notes.append("true/false values")
    elif pd.api.types.is_numeric_dtype(values):
        # an int column with gaps reads as float; ingestion makes it int again once those rows are dropped
        whole = pd.api.types.is_integer_dtype(values) or had_missing and bool((values == values.round()).all())
        spec["dtype"] = "int" if whole else "float"
        if whole and not pd.api.types.is_integer_dtype(values):
            notes.append("whole numbers (read as float because of the rows without a target)")
        finite = values[np.isfinite(values.astype(float))]
        if len(finite):
            spec["min"], spec["max"], note = number_range([], float(finite.min()), float(finite.max()), whole)
            notes.append(note)
    elif distinct <= MAX_CATEGORIES:
        spec |= {"dtype": "category", "allowed": sorted({plain_value(v) for v in values},
                                                         key=lambda v: (isinstance(v, str), v))}
        notes.append(f"{distinct} distinct values in {len(values)} rows")
    else:
        spec["dtype"] = "string"
        notes.append(f"{distinct} distinct values in {len(values)} rows, too many to list")
    return DraftedColumn(name, spec, ", ".join(notes), distinct, "data")


def plain_value(value: Any) -> Any:
    """A YAML-friendly value: bools and ints as they are, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return int(value) if isinstance(value, (int, np.integer)) else str(value)
