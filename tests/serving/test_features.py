"""The one datetime parser: a column's format or ISO 8601, unix numbers, UTC; anything else invalid, never raised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.features import DatetimeFeatures, parse_datetimes


def as_text(moments: np.ndarray) -> list[str | None]:
    return [None if np.isnat(m) else str(m)[:19] for m in moments]


def test_the_columns_format_and_iso_8601_both_parse_to_naive_utc() -> None:
    moments, invalid = parse_datetimes(["31/01/2024 10:30", "2024-01-31T12:00:00+02:00", "2024-02-29 23:59:59Z"],
                                       "%d/%m/%Y %H:%M")
    assert as_text(moments) == ["2024-01-31T10:30:00", "2024-01-31T10:00:00", "2024-02-29T23:59:59"]
    assert not invalid.any()


@pytest.mark.parametrize("value", ["31/02/2024 10:30", "yesterday", "5407", "9999-12-31", 42, True, 1.5, [1]])
def test_what_does_not_parse_is_invalid_not_an_exception(value: object) -> None:
    """Year 5407 and 9999 parse as dates, but not as nanosecond instants; a number is no text date."""
    moments, invalid = parse_datetimes(["2024-01-31", value], "%d/%m/%Y %H:%M")
    assert as_text(moments) == ["2024-01-31T00:00:00", None] and invalid.tolist() == [False, True]


def test_missing_values_are_missing_not_invalid() -> None:
    moments, invalid = parse_datetimes([None, float("nan"), "", "  ", pd.NaT, "2024-01-31"])
    assert as_text(moments) == [None] * 5 + ["2024-01-31T00:00:00"] and not invalid.any()


def test_unix_formats_take_numbers_and_numeric_text() -> None:
    assert as_text(parse_datetimes([1_700_000_000, "1700000000", None], "unix")[0]) == \
        ["2023-11-14T22:13:20", "2023-11-14T22:13:20", None]
    moments, invalid = parse_datetimes([1_700_000_000_000, 10**20, "soon", False], "unix_ms")
    assert as_text(moments) == ["2023-11-14T22:13:20", None, None, None]
    assert invalid.tolist() == [False, True, True, True]


def test_parsed_datetimes_pass_through_and_the_features_read_them() -> None:
    moments = np.array(["2024-03-10T07:00", "NaT"], dtype="datetime64[ns]")
    assert as_text(parse_datetimes(moments)[0]) == ["2024-03-10T07:00:00", None]
    parts = DatetimeFeatures().fit(pd.DataFrame({"t": moments})).transform(pd.DataFrame({"t": moments}))
    assert parts[0].tolist() == [2024, 3, 10, 6, 7]  # a Sunday (Monday is 0)
    assert np.isnan(parts[1]).all()
