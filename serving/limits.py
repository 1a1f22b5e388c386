"""How large one request may be: rows, columns and values, from the settings and the served model's width.

A body's values are counted from its bytes before anything is built from them (serving/body.py): decoding or
parsing builds a Python object per value, so a 10 MB body of a million values could otherwise grow a worker by
hundreds of MB. Capping the values bounds whatever is built after the check; rows and columns are then the typed
decoder's limits (msgspec.Meta), exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# Values a body may hold beyond its rows: column names, a CSV header, params.
SPARE_VALUES = 1_000


@dataclass(frozen=True)
class Limits:
    """The most a request may hold: rows (SERVING_MAX_ROWS), columns in a row or header (SERVING_MAX_COLUMNS),
    and values in all (SERVING_MAX_VALUES: JSON numbers, strings, booleans and nulls, a key and its value counting
    once; CSV fields)."""

    rows: int
    columns: int
    values: int

    def too_many_columns(self, what: str) -> str:
        return f"{what}; the limit is {self.columns} columns (SERVING_MAX_COLUMNS raises it)"

    def too_many_values(self, what: str) -> str:
        return f"{what}; the limit is {self.values} values in one request (SERVING_MAX_VALUES raises it)"


@lru_cache(maxsize=64)
def request_limits(max_rows: int, max_columns: int, max_values: int, width: int) -> Limits:
    """The limits for a model with `width` accepted columns (features, keys, ignored columns). max_columns and
    max_values of 0 are derived: twice the width and at least 16 more; max_rows + 1 rows of the width (a header
    or column names count as a row), plus SPARE_VALUES."""
    columns = max_columns or max(2 * width, width + 16)
    values = max_values or (max_rows + 1) * width + SPARE_VALUES
    return Limits(max_rows, columns, values)
