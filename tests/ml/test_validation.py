"""The GX suite generated from the schema lets good data through and names every problem in bad data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.ml.components import data_docs
from include.ml.components.validation import build_suite, validate
from include.ml.entities import ValidationConfig
from include.ml.exceptions import DataValidationError
from include.ml.schema_file import ColumnSpec, SchemaConfig

SCHEMA = SchemaConfig(
    task="classification", target="label", min_rows=5,
    columns=(
        ColumnSpec(name="size", dtype="float", min=0, max=10),
        ColumnSpec(name="count", dtype="int", min=0, max=100),
        ColumnSpec(name="colour", dtype="category", nullable=True, allowed=("red", "blue")),
        ColumnSpec(name="label", dtype="category", allowed=("yes", "no")),
    ))
CONFIG = ValidationConfig(SCHEMA)


def good_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "size": [1.0, 2.5, 3.0, 9.9, 0.0, 4.2],
        "count": [1, 2, 3, 4, 5, 100],
        "colour": ["red", "blue", None, "red", "blue", "red"],
        "label": ["yes", "no", "yes", "no", "yes", "no"],
    })


def failures_of(frame: pd.DataFrame, tmp_path: Path) -> list[dict]:
    with pytest.raises(DataValidationError) as caught:
        validate(frame, CONFIG, tmp_path)
    assert "data validation failed" in str(caught.value)
    return caught.value.failures


def only(failures: list[dict], expectation: str) -> dict:
    matching = [f for f in failures if f["expectation"] == expectation]
    assert len(matching) == 1, failures
    return matching[0]


def test_suite_covers_every_column() -> None:
    import great_expectations as gx

    gx.get_context(mode="ephemeral")
    suite = build_suite(SCHEMA)
    types = [e.expectation_type for e in suite.expectations]
    assert types.count("expect_column_to_exist") == 4
    assert "expect_table_columns_to_match_set" in types and "expect_table_row_count_to_be_between" in types
    assert types.count("expect_column_values_to_be_between") == 2
    assert types.count("expect_column_values_to_be_in_set") == 2


def test_good_data_passes_and_data_docs_are_written(tmp_path: Path) -> None:
    result = validate(good_frame(), CONFIG, tmp_path)
    assert result.success and result.passed == result.evaluated and result.rows == 6
    docs = Path(result.data_docs)
    assert docs.is_file() and "<html" in docs.read_text().lower()
    assert list((tmp_path / "data_docs" / "validations").rglob("*.html"))
    assert json.loads((tmp_path / "result.json").read_text())["success"] is True


def test_missing_column(tmp_path: Path) -> None:
    failures = failures_of(good_frame().drop(columns=["count"]), tmp_path)
    assert only(failures, "expect_column_to_exist")["column"] == "count"
    assert "missing ['count']" in only(failures, "expect_table_columns_to_match_set")["observed"]
    # checks on the missing column are consequences, not reported separately
    assert all(f["column"] != "count" or f["expectation"] == "expect_column_to_exist" for f in failures)


def test_unexpected_column(tmp_path: Path) -> None:
    failures = failures_of(good_frame().assign(extra=1), tmp_path)
    assert only(failures, "expect_table_columns_to_match_set")["observed"] == "unexpected ['extra']"


def test_wrong_dtype(tmp_path: Path) -> None:
    frame = good_frame().astype({"size": str})
    frame.loc[2, "size"] = "big"
    failure = only(failures_of(frame, tmp_path), "expect_column_values_to_be_in_type_list")
    assert failure["column"] == "size" and failure["expected"] == "dtype=float"
    assert failure["examples"] == ["big"] and failure["unexpected_count"] == 1


def test_out_of_range_values_are_shown(tmp_path: Path) -> None:
    frame = good_frame()
    frame.loc[[1, 3], "size"] = [42.0, -1.0]
    failure = only(failures_of(frame, tmp_path), "expect_column_values_to_be_between")
    assert failure["column"] == "size" and failure["unexpected_count"] == 2
    assert sorted(failure["examples"]) == [-1.0, 42.0]


def test_value_outside_allowed_set(tmp_path: Path) -> None:
    frame = good_frame()
    frame.loc[0, "colour"] = "green"
    failure = only(failures_of(frame, tmp_path), "expect_column_values_to_be_in_set")
    assert failure["column"] == "colour" and failure["examples"] == ["green"]


def test_all_null_column_fails_even_when_nullable(tmp_path: Path) -> None:
    frame = good_frame().assign(colour=None)
    failure = only(failures_of(frame, tmp_path), "expect_column_values_to_not_be_null")
    assert failure["column"] == "colour" and failure["unexpected_percent"] == 100.0


def test_null_in_required_column(tmp_path: Path) -> None:
    frame = good_frame()
    frame.loc[4, "size"] = np.nan
    failure = only(failures_of(frame, tmp_path), "expect_column_values_to_not_be_null")
    assert failure["column"] == "size" and failure["unexpected_count"] == 1


def test_too_few_rows(tmp_path: Path) -> None:
    failure = only(failures_of(good_frame().head(3), tmp_path), "expect_table_row_count_to_be_between")
    assert failure["observed"] == 3


def test_failure_message_is_readable_and_report_is_kept(tmp_path: Path) -> None:
    frame = good_frame()
    frame.loc[1, "count"] = 1000
    with pytest.raises(DataValidationError) as caught:
        validate(frame, CONFIG, tmp_path)
    message = str(caught.value)
    assert "count: expect_column_values_to_be_between (expected min_value=0.0, max_value=100.0)" in message
    assert "1 bad value(s) (16.7%), e.g. [1000]" in message
    assert "Data Docs:" in message and Path(caught.value.data_docs).is_file()
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["success"] is False and saved["failures"][0]["column"] == "count"


def mixed_failures(change: Any, tmp_path: Path) -> list[dict]:
    from tests.support.frames import mixed_dataset, mixed_schema

    frame = mixed_dataset("regression").astype({"when": object})
    change(frame)
    with pytest.raises(DataValidationError) as caught:
        validate(frame, ValidationConfig(mixed_schema("regression")), tmp_path)
    return caught.value.failures


def test_every_dtype_and_role_passes_when_the_data_keeps_the_contract(tmp_path: Path) -> None:
    from tests.support.frames import mixed_dataset, mixed_schema

    result = validate(mixed_dataset("regression"), ValidationConfig(mixed_schema("regression")), tmp_path)
    assert result.success and result.failures == []


def test_datetimes_that_do_not_parse_or_fall_outside_the_range_are_named(tmp_path: Path) -> None:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[5, "when"] = "31/12/2020"
    unparsed = only(mixed_failures(change, tmp_path / "a"), "expect_column_values_to_be_in_type_list")
    assert (unparsed["column"], unparsed["examples"], unparsed["rows"]) == ("when", ["31/12/2020"], [5])
    assert "format=%Y-%m-%d %H:%M:%S" in unparsed["expected"]

    def late(frame: pd.DataFrame) -> None:
        frame.loc[6, "when"] = "2030-01-01 00:00:00"
    outside = only(mixed_failures(late, tmp_path / "b"), "expect_column_values_to_be_between")
    assert (outside["examples"], outside["rows"]) == (["2030-01-01 00:00:00"], [6])
    json.dumps(outside)  # what result.json and the task log hold


def test_ordinal_values_must_be_among_its_categories_and_roles_are_checked_too(tmp_path: Path) -> None:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[7, "grade"] = "top"
        frame.loc[8, "row_id"] = None  # the id column is not nullable
    failures = mixed_failures(change, tmp_path)
    assert only(failures, "expect_column_values_to_be_in_set")["examples"] == ["top"]
    assert only(failures, "expect_column_values_to_not_be_null")["column"] == "row_id"


def test_a_gap_in_an_int_column_is_one_failure_not_two(tmp_path: Path) -> None:
    """pandas reads an int column with a gap as floats: the type check would fail too, for the same cause."""
    frame = good_frame().astype({"count": float})
    frame.loc[2, "count"] = np.nan
    failures = failures_of(frame, tmp_path)
    assert [f["expectation"] for f in failures] == ["expect_column_values_to_not_be_null"]
    frame.loc[3, "count"] = 2.5  # a fraction in an int column is a type failure of its own, naming the value
    assert only(failures_of(frame, tmp_path / "b"), "expect_column_values_to_be_in_type_list")["examples"] == [2.5]


def test_a_date_only_max_takes_in_its_whole_day(tmp_path: Path) -> None:
    """mixed_schema's `when` has max 2021-12-31: that evening is in range, the next midnight is not."""
    from tests.support.frames import mixed_dataset, mixed_schema

    frame = mixed_dataset("regression").astype({"when": object})
    frame.loc[0, "when"] = "2021-12-31 23:59:59"
    assert validate(frame, ValidationConfig(mixed_schema("regression")), tmp_path / "a").success

    def next_midnight(frame: pd.DataFrame) -> None:
        frame.loc[1, "when"] = "2022-01-01 00:00:00"
    assert only(mixed_failures(next_midnight, tmp_path / "b"), "expect_column_values_to_be_between")["rows"] == [1]
    contract = mixed_schema("regression").feature_contract()
    assert next(f for f in contract["features"] if f["name"] == "when")["max"] == "2021-12-31T23:59:59.999999"


def test_every_data_docs_page_carries_the_inline_style_that_reads_under_the_report_csp(tmp_path: Path) -> None:
    """The api-server serves Data Docs with a CSP that loads no stylesheet or font (plugins/mlops_links.py): each page
    holds the inline style that shows pass and fail as words, once, and nothing from the data is in that style."""
    failures_of(good_frame().assign(colour=["red", '<img src=x onerror="alert(1)">', None, "red", "blue", "red"]),
                tmp_path)
    pages = list((tmp_path / "data_docs").rglob("*.html"))
    assert len(pages) >= 3  # the index, the suite, the validation
    for page in pages:
        assert page.read_text().count(data_docs.STYLE) == 1, page
    assert data_docs.style_pages(tmp_path / "data_docs") == len(pages)  # again: still once
    assert all(page.read_text().count(data_docs.STYLE) == 1 for page in pages)
    assert ".fa-times::before" in data_docs.STYLE and "<" not in data_docs.STYLE.removeprefix(
        '<style id="mlops-data-docs">').removesuffix("</style>")
