"""What a model derives from a datetime column, as one step of its fitted scikit-learn pipeline.

It lives in the serving package because every prediction server must load it: it is on serving/trust.py's skops
allow-list, and the pipeline side imports it from here when it builds a model. `parse_datetimes` is the one parser
of datetime values: the server's request validation, the pipeline's data checks and the transformer all use it, so
a value accepted in one place means the same instant in the others.

Values: text in the column's format (a strftime format such as "%d/%m/%Y %H:%M") or in ISO 8601 (always accepted:
unambiguous, and what browsers and JSON encoders write), or numbers for the `unix` (seconds) and `unix_ms`
(milliseconds) formats, or datetime64 values already parsed. A value with a UTC
offset is converted to UTC; a naive one is taken as UTC. Missing values (None, NaN, NaT, "") stay missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

UNIX_UNITS = {"unix": "s", "unix_ms": "ms"}
PARTS = ("year", "month", "day", "dayofweek", "hour")
PERIODS = {"month": 12, "dayofweek": 7, "hour": 24}  # the parts that wrap around, with their period
PERIOD_START = {"month": 1}  # months are 1-12: the sine and cosine start their cycle at January


def parse_datetimes(values: Any, format: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The values as naive UTC datetime64[ns] (NaT where missing or invalid), and which present values are invalid
    (text that does not match the format, numbers where text is expected, instants out of range)."""
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object)
                                                                    if not _is_datetime(values) else values)
    series = series.reset_index(drop=True)
    text_dtype = isinstance(series.dtype, pd.StringDtype)  # every value is text or missing
    if text_dtype or series.dtype == object:
        blank = series.str.strip() == "" if text_dtype else series.map(lambda v: isinstance(v, str) and not v.strip())
        series = series.where(~blank.fillna(False).astype(bool), None)
    missing = series.isna().to_numpy()
    if _is_datetime(series):
        parsed = pd.to_datetime(series, utc=True)
    elif format in UNIX_UNITS:
        numbers = pd.to_numeric(series.where(~series.map(lambda v: isinstance(v, bool))), errors="coerce")
        parsed = pd.to_datetime(numbers, unit=UNIX_UNITS[format], utc=True, errors="coerce")
    else:
        # a number is not a date in a text format
        text = series if text_dtype else series.where(series.map(lambda v: isinstance(v, str)))
        parsed = pd.to_datetime(text, format=format or "ISO8601", utc=True, errors="coerce")
        retry = parsed.isna() & text.notna()
        if format and retry.any():  # what the column's own format missed, in ISO 8601
            parsed[retry] = pd.to_datetime(text[retry], format="ISO8601", utc=True, errors="coerce")
    parsed = parsed.dt.tz_localize(None)
    # parsed in a coarser unit, it may hold instants nanoseconds cannot (year 5407): invalid, like any bad value
    parsed = parsed.where(parsed.isna() | ((parsed >= pd.Timestamp.min) & (parsed <= pd.Timestamp.max)))
    moments = parsed.astype("datetime64[ns]").to_numpy()
    return moments, np.isnat(moments) & ~missing


def _is_datetime(values: Any) -> bool:
    dtype = getattr(values, "dtype", None)
    return dtype is not None and (pd.api.types.is_datetime64_any_dtype(dtype))


class DatetimeFeatures(TransformerMixin, BaseEstimator):
    """Each datetime column as its year, month, day, day of week (Monday 0) and hour, floats with NaN where the value
    is missing; with `cyclical`, also the sine and cosine of month, day of week and hour (December sits next to
    January). Output columns are named `<column>.<part>` (`<column>.<part>_sin`, `_cos`)."""

    def __init__(self, format: str | None = None, cyclical: bool = False) -> None:
        self.format = format
        self.cyclical = cyclical

    def fit(self, X: Any, y: Any = None) -> DatetimeFeatures:
        self.n_features_in_ = X.shape[1]
        self.columns_ = [str(c) for c in X.columns] if hasattr(X, "columns") else \
            [f"x{i}" for i in range(X.shape[1])]
        return self

    def transform(self, X: Any) -> np.ndarray:
        columns = [X.iloc[:, i] for i in range(X.shape[1])] if hasattr(X, "iloc") else \
            [np.asarray(X)[:, i] for i in range(X.shape[1])]
        if len(columns) != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} datetime columns, got {len(columns)}")
        out = []
        for values in columns:
            moments = pd.DatetimeIndex(parse_datetimes(values, self.format)[0])
            missing = np.isnat(moments.to_numpy())
            for part in PARTS:
                numbers = np.where(missing, np.nan, np.asarray(getattr(moments, part), dtype=np.float64))
                out.append(numbers)
                if self.cyclical and part in PERIODS:
                    angle = 2 * np.pi * (numbers - PERIOD_START.get(part, 0)) / PERIODS[part]
                    out += [np.sin(angle), np.cos(angle)]
        return np.column_stack(out) if out else np.empty((X.shape[0], 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = []
        for column in (input_features if input_features is not None else self.columns_):
            for part in PARTS:
                names.append(f"{column}.{part}")
                if self.cyclical and part in PERIODS:
                    names += [f"{column}.{part}_sin", f"{column}.{part}_cos"]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags
