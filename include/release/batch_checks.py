"""Batch prediction's row checks (include/release/batch.py): the values of a chunk that are not of their column's
type, the failures of the per-row suite as one line per bad value, and the counts per expectation that a `fail` run
reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from include.ml.exceptions import DataValidationError
from include.ml.schema_file import ColumnSpec, SchemaConfig
from serving.features import parse_datetimes

# Failures that make the file unusable as a whole: the run stops at the first chunk that shows one.
BROKEN_FILE = ("expect_table_columns_to_match_set", "expect_column_to_exist", "expect_column_values_to_be_in_type_list")
TYPE_CHECK, NOT_NULL = "expect_column_values_to_be_in_type_list", "expect_column_values_to_not_be_null"
_SAMPLE = 5


def raise_if_broken(failures: list[dict[str, Any]], keys: pd.DataFrame) -> None:
    broken = [f for f in failures if f["expectation"] in BROKEN_FILE]
    if broken:
        raise DataValidationError([by_key(f, keys) for f in broken], None)


def by_key(failure: dict[str, Any], keys: pd.DataFrame) -> dict[str, Any]:
    """A failure with its sample rows named by the first key column instead of the row number."""
    failure = {k: v for k, v in failure.items() if k != "unexpected_rows"}
    if failure.get("rows"):
        failure["rows"] = [_plain(v) for v in keys.iloc[:, 0].loc[failure["rows"]].tolist()]
    return failure


def typed_frame(frame: pd.DataFrame, schema: SchemaConfig) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """skip, flag: the values that are not of their column's type, as problems of their rows (text where a number or
    a datetime is expected, a fraction or a missing value in a non-nullable int column), and the frame without those
    rows, each column as its check expects it: numbers as numbers, datetimes parsed."""
    problems, bad = [], np.zeros(len(frame), dtype=bool)
    columns: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.name not in frame:
            continue  # the suite's column check reports it
        values = frame[spec.name]
        if spec.is_numeric:
            if values.dtype == bool:  # true / false: not numbers
                numbers = pd.Series(np.nan, index=frame.index)
            else:
                numbers = values if pd.api.types.is_numeric_dtype(values.dtype) \
                    else pd.to_numeric(values, errors="coerce")
            wrong = numbers.isna().to_numpy() & values.notna().to_numpy()
            if spec.dtype == "int":
                present = numbers.notna().to_numpy()
                wrong |= present & (numbers.to_numpy(np.float64, na_value=np.nan) % 1 != 0)
                if not spec.nullable:  # an int column holds no missing value: one would make the column float
                    missing = ~present & ~wrong
                    problems.append(_problem(frame.index[missing], spec, NOT_NULL, ""))
                    bad |= missing
            problems.append(_problem(frame.index[wrong], spec, TYPE_CHECK, f"dtype={spec.dtype}"))
            bad |= wrong
            columns[spec.name] = numbers
        elif spec.dtype == "datetime":
            moments, wrong = parse_datetimes(values, spec.format)
            problems.append(_problem(frame.index[wrong], spec, TYPE_CHECK,
                                     f"dtype=datetime, format={spec.format or 'ISO 8601'}"))
            bad |= wrong
            columns[spec.name] = pd.Series(moments, index=frame.index)
    typed = frame.assign(**columns) if columns else frame
    typed = typed[~bad] if bad.any() else typed
    ints = {s.name: np.int64 for s in schema.columns if s.dtype == "int" and not s.nullable and s.name in typed}
    return (typed.astype(ints) if ints else typed), [p for p in problems if len(p)]


def _problem(rows: pd.Index, spec: ColumnSpec, expectation: str, expected: str) -> pd.DataFrame:
    return pd.DataFrame({"row": rows.to_numpy(), "column": spec.name, "expectation": expectation,
                         "expected": expected})


def problems_frame(typed: list[pd.DataFrame], failures: list[dict[str, Any]], frame: pd.DataFrame,
              keys: pd.DataFrame) -> pd.DataFrame:
    """Every problem of the chunk, one line per bad value, in row order: row, the key columns, column, expectation,
    expected, value (as read, empty when missing)."""
    found = typed + [pd.DataFrame({"row": np.asarray(f["unexpected_rows"], dtype=np.int64), "column": f["column"],
                                   "expectation": f["expectation"], "expected": f["expected"]})
                     for f in failures if f.get("unexpected_rows")]
    if not found:
        problems = pd.DataFrame({"row": np.empty(0, dtype=np.int64), "column": [], "expectation": [], "expected": []})
    else:
        problems = pd.concat(found, ignore_index=True).sort_values("row", kind="stable", ignore_index=True)
    values = pd.Series([frame.at[row, column] for row, column in zip(problems["row"], problems["column"])],
                       dtype=object)
    problems["value"] = values.where(values.notna(), None)
    key_values = keys.loc[problems["row"]].reset_index(drop=True)
    return pd.concat([problems[["row"]], key_values, problems[["column", "expectation", "expected", "value"]]],
                     axis=1)


def count_failures(bad: dict[tuple[str | None, str], dict[str, Any]], failures: list[dict[str, Any]]) -> None:
    """Add one chunk's bad rows to the counts per expectation, keeping the first few examples and row ids."""
    for failure in failures:
        seen = bad.setdefault((failure["column"], failure["expectation"]),
                              {**failure, "unexpected_count": 0, "examples": [], "rows": []})
        seen["unexpected_count"] += failure["unexpected_count"] or 0
        seen["examples"] = (seen["examples"] + failure["examples"])[:_SAMPLE]
        seen["rows"] = (seen["rows"] + failure["rows"])[:_SAMPLE]


def report(bad: dict[tuple[str | None, str], dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    return [{**failure, "unexpected_percent": 100 * failure["unexpected_count"] / rows} for failure in bad.values()]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value

