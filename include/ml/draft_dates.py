"""Datetime columns as `python main.py init` drafts them: a text column's format, an epoch column's unit, and
the min / max a schema.yaml datetime column is given.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from serving.features import parse_datetimes

EPOCH_NAME = re.compile(r"(time|date|_at|timestamp|_ts)$", re.IGNORECASE)
EPOCH_SECONDS = (631_152_000, 4_102_444_800)  # 1990-01-01 .. 2100-01-01


def datetime_format(values: pd.Series) -> tuple[str | None, str] | None:
    """(format, note) when every text value parses as a date the way the pipeline parses it; None otherwise."""
    from pandas.tseries.api import guess_datetime_format

    uniques = pd.Series(pd.unique(values.astype(str)))
    if uniques.empty:
        return None
    sample = uniques.iloc[:20]
    candidates: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when a guess goes against dayfirst
        for dayfirst in (False, True):
            for value in sample.iloc[:5]:
                fmt = guess_datetime_format(value, dayfirst=dayfirst)
                if fmt and fmt not in candidates and re.search("%[Yy]", fmt) and re.search("%[mbB]", fmt):
                    candidates.append(fmt)
    try:
        return _parsed_format(uniques, sample, candidates)
    except (OverflowError, pd.errors.OutOfBoundsDatetime):  # e.g. "5407" read as a year in ISO 8601
        return None


def _parsed_format(uniques: pd.Series, sample: pd.Series, candidates: list[str]) -> tuple[str | None, str] | None:
    strict: dict[str, np.ndarray] = {}  # the formats every value parses in, without the ISO 8601 fallback
    for fmt in candidates:
        moments = pd.to_datetime(uniques, format=fmt, utc=True, errors="coerce")
        if moments.notna().all():
            strict[fmt] = moments.dt.tz_localize(None).to_numpy()
    chosen = next(iter(strict), None)
    for fmt in [chosen] if chosen else [None, *candidates]:  # else: ISO 8601, or a format with ISO beside it
        if not parse_datetimes(sample, fmt)[1].any() and not parse_datetimes(uniques, fmt)[1].any():
            break
    else:
        return None
    note = f"dates in format {fmt}" if fmt else "dates in ISO 8601"
    others = [other for other, those in strict.items() if other != fmt and not np.array_equal(those, strict[fmt])] \
        if fmt in strict else []
    if others:
        note += f" (every value also parses as {others[0]}: confirm the order of day and month)"
    return fmt, note


def epoch_format(name: str, values: pd.Series) -> str | None:
    """unix or unix_ms for a column of whole numbers named like a time whose values are all epochs in 1990-2100."""
    if not EPOCH_NAME.search(name.strip()) or values.empty or not bool((values == values.round()).all()):
        return None
    low, high = float(values.min()), float(values.max())
    for fmt, scale in (("unix", 1), ("unix_ms", 1000)):
        if EPOCH_SECONDS[0] * scale <= low and high <= EPOCH_SECONDS[1] * scale:
            return fmt
    return None


def datetime_range(spec: dict[str, Any], moments: np.ndarray) -> str:
    """min: the first observed day; max: the day after the last instant, plus the observed span again."""
    present = pd.DatetimeIndex(moments[~np.isnat(moments)])
    first, last = present.min(), present.max()
    spec["min"] = first.normalize().date().isoformat()
    spec["max"] = (last + (last - first)).ceil("D").date().isoformat()
    return f"observed {first} to {last}; max leaves room for as long again"
