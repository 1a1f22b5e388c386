"""The min / max `python main.py init` drafts for a number column: a clock or calendar field's natural bounds, else
the observed range widened by DRAFT_RANGE_MARGIN and rounded outward.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

DRAFT_RANGE_MARGIN = 0.10  # share of the observed range added on each side of min/max
# natural bounds of clock and calendar fields, by the last word of the column's name (or the whole name)
NATURAL_BOUNDS: dict[str, tuple[int, int]] = {
    "hour": (0, 23), "minute": (0, 59), "second": (0, 59), "month": (1, 12), "day": (1, 31),
    "dayofmonth": (1, 31), "quarter": (1, 4), "week": (1, 53), "weekofyear": (1, 53),
    "dayofyear": (1, 366), "doy": (1, 366)}
WEEKDAY_NAMES = ("weekday", "dayofweek", "dow", "wday")
HHMM_MAX = 2400


def number_range(words: list[str], lo: float, hi: float, whole: bool, integral: bool = False,
                  hhmm: bool = False) -> tuple[float | int, float | int, str]:
    """min, max and the note: a clock or calendar field's natural bounds (when every value is a whole number in
    them, `integral`; `hhmm`: a *time column whose values' last two digits are below 60), else the observed range
    with a margin (rounded to whole numbers for an int column: `whole`)."""
    joined = "".join(words)
    name = words[-1] if words else ""
    bounds = NATURAL_BOUNDS.get(name) or NATURAL_BOUNDS.get(joined)
    if name in WEEKDAY_NAMES or joined in WEEKDAY_NAMES:
        bounds = (0, 6) if lo < 1 else (1, 7)
    if bounds and integral and bounds[0] <= lo and hi <= bounds[1]:
        return bounds[0], bounds[1], f"observed {lo:g} to {hi:g}; {name or joined} field: {bounds[0]} to {bounds[1]}"
    if hhmm and 0 <= lo and hi <= HHMM_MAX and hi >= 100:
        return 0, HHMM_MAX, f"observed {lo:g} to {hi:g}; hhmm clock times: 0 to {HHMM_MAX}"
    low, high, note = _range(lo, hi, whole)
    return low, high, note


def _range(lo: float, hi: float, whole: bool) -> tuple[float | int, float | int, str]:
    margin = DRAFT_RANGE_MARGIN * (hi - lo) if hi > lo else (DRAFT_RANGE_MARGIN * abs(lo) or 1.0)
    low = max(lo - margin, 0.0) if lo >= 0 else lo - margin  # a non-negative column stays non-negative
    low, high = _round_outward(low, ROUND_FLOOR), _round_outward(hi + margin, ROUND_CEILING)
    if whole:
        low, high = math.floor(low), math.ceil(high)
    as_number = [int(x) if float(x).is_integer() else x for x in (low, high)]
    return as_number[0], as_number[1], f"constant {lo:g}" if hi == lo else f"observed {lo:g} to {hi:g}"


def _round_outward(x: float, rounding: str) -> float:
    """Round to 4 significant digits: down for a lower bound (ROUND_FLOOR), up for an upper one."""
    if x == 0:
        return 0.0
    d = Decimal(f"{x:.12g}")  # without float noise: 4.6 - 1.13 is 3.4699999999999998
    return float(d.quantize(Decimal(1).scaleb(d.adjusted() - 3), rounding=rounding))
