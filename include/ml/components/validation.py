"""Validation: a Great Expectations suite generated from schema.yaml gates the data."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from include.ml import artifacts
from include.ml.components import data_docs
from include.ml.entities import ValidationConfig
from include.ml.exceptions import DataValidationError
from include.ml.schema_file import ColumnSpec, SchemaConfig
from serving.features import parse_datetimes

log = logging.getLogger(__name__)

RESULT = "result.json"
DATA_DOCS = "data_docs"

# dtype names accepted for each schema dtype (text columns reach GX as object, see _for_gx)
_TYPES = {
    "float": ["float64", "float32", "Float64", "Float32", "int64", "int32", "Int64", "Int32"],
    "int": ["int64", "int32", "int16", "int8", "Int64", "Int32"],
    "category": ["object", "str", "category", "int64", "bool"],
    "ordinal": ["object", "str", "category", "int64", "bool"],
    "datetime": ["datetime64[ns]"],  # once _for_gx has parsed the column; a value that does not parse keeps it text
    "string": ["object", "str"],
}
# Reading a column with missing values turns ints into floats.
_NULLABLE_INT_TYPES = _TYPES["int"] + ["float64", "Float64"]
_EXAMPLES = 5


@dataclass(frozen=True)
class ValidationResult:
    success: bool
    evaluated: int
    passed: int
    rows: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    data_docs: str | None = None

    def summary(self) -> str:
        state = "passed" if self.success else "FAILED"
        return f"{state}: {self.passed}/{self.evaluated} expectations met on {self.rows} rows"

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links data_docs
        return {"success": self.success, "passed": self.passed, "evaluated": self.evaluated, "rows": self.rows,
                "data_docs": self.data_docs}


def build_suite(schema: SchemaConfig, name: str = "schema", per_row: bool = False) -> Any:
    """The Great Expectations suite that schema.yaml describes. With `per_row`, only what each row meets or breaks
    on its own (no row count, no share of missing values): the checks of a file scored in chunks."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name=name)
    names = [c.name for c in schema.columns]
    suite.add_expectation(E.ExpectTableColumnsToMatchSet(column_set=names, exact_match=True))
    if not per_row:
        suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=schema.min_rows))
    for col in schema.columns:
        for expectation in _column_expectations(E, col, per_row):
            suite.add_expectation(expectation)
    return suite


def _column_expectations(E: Any, col: ColumnSpec, per_row: bool = False) -> list[Any]:
    types = _NULLABLE_INT_TYPES if col.dtype == "int" and col.nullable else _TYPES[col.dtype]
    found = [E.ExpectColumnToExist(column=col.name),
             E.ExpectColumnValuesToBeInTypeList(column=col.name, type_list=types)]
    if col.nullable:
        if not per_row:
            found.append(E.ExpectColumnValuesToNotBeNull(column=col.name,
                                                         mostly=round(1 - col.max_null_fraction, 6)))
    else:
        found.append(E.ExpectColumnValuesToNotBeNull(column=col.name))
    if col.min is not None or col.max is not None:
        low, high = col.moment_range() if col.dtype == "datetime" else (col.min, col.max)
        found.append(E.ExpectColumnValuesToBeBetween(column=col.name, min_value=low, max_value=high))
    if col.values:
        found.append(E.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.values)))
    return found




def _ephemeral_context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _context(docs_dir: Path) -> Any:
    context = _ephemeral_context()
    # Replace the default site, which writes to a fresh temporary directory every time.
    for name, site in list(context.list_data_docs_sites().items()):
        context.delete_data_docs_site(name)
        shutil.rmtree(site.get("store_backend", {}).get("base_directory", ""), ignore_errors=True)
    context.add_data_docs_site(site_name="pipeline", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return context


def _failure(result: Any, schema: SchemaConfig, frame: pd.DataFrame) -> dict[str, Any]:
    config = result.expectation_config
    columns = [c.name for c in schema.columns]
    outcome = result.result or {}
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("column", "batch_id", "column_set", "exact_match")}
    if config.type == "expect_column_values_to_be_in_type_list":
        column = config.kwargs["column"]
        spec = next(c for c in schema.columns if c.name == column)
        kwargs = {"dtype": spec.dtype} | ({"format": spec.format or "ISO 8601"} if spec.dtype == "datetime" else {})
        if spec.is_numeric and column in frame:
            outcome = _non_numeric(frame[column], whole=spec.dtype == "int")
        elif spec.dtype == "datetime" and column in frame:
            outcome = _not_datetimes(frame[column], spec)
    info = result.exception_info or {}
    error = info.get("exception_message") or next(
        (v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("exception_message")), None)
    observed = outcome.get("observed_value")
    if config.type == "expect_table_columns_to_match_set" and observed is not None:
        missing = sorted(set(columns) - set(observed))
        unexpected = sorted(set(observed) - set(columns))
        observed = "; ".join(filter(None, [missing and f"missing {missing}",
                                           unexpected and f"unexpected {unexpected}"]))
    every_row = {"unexpected_rows": [_plain(i) for i in outcome["unexpected_index_list"]]} \
        if outcome.get("unexpected_index_list") is not None else {}  # result_format COMPLETE: each bad row's label
    return {
        "column": config.kwargs.get("column"),
        "expectation": config.type,
        "expected": ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None),
        "observed": observed,
        "unexpected_count": outcome.get("unexpected_count"),
        "unexpected_percent": outcome.get("unexpected_percent"),
        "examples": [_plain_value(v) for v in (outcome.get("partial_unexpected_list") or [])[:_EXAMPLES]],
        "rows": [_plain(i) for i in (outcome.get("partial_unexpected_index_list") or [])[:_EXAMPLES]],
        "error": error,
    } | every_row


def _non_numeric(column: pd.Series, whole: bool = False) -> dict[str, Any]:
    """Which values keep a numeric column from being numeric (or, `whole`, an int column from being whole numbers):
    more useful than the dtype alone. Missing values are not counted: the not-null check names them."""
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[(numbers.isna() & column.notna()) | (whole & numbers.notna() & (numbers != numbers.round()))]
    return {"observed_value": f"dtype {column.dtype}", "unexpected_count": len(bad),
            "unexpected_percent": 100 * len(bad) / max(len(column), 1),
            "partial_unexpected_list": bad.head(_EXAMPLES).tolist(),
            "partial_unexpected_index_list": bad.index[:_EXAMPLES].tolist()}


def _not_datetimes(column: pd.Series, spec: ColumnSpec) -> dict[str, Any]:
    """Which values of a datetime column do not parse in its format."""
    _, invalid = parse_datetimes(column, spec.format)
    bad = column[invalid]
    return {"observed_value": f"{len(bad)} values that are not datetimes in format {spec.format or 'ISO 8601'}",
            "unexpected_count": len(bad), "unexpected_percent": 100 * len(bad) / max(len(column), 1),
            "partial_unexpected_list": bad.head(_EXAMPLES).tolist(),
            "partial_unexpected_index_list": bad.index[:_EXAMPLES].tolist()}


def _plain_value(value: Any) -> Any:
    """An example value as JSON has it: datetimes as ISO text, numpy scalars as Python ones."""
    if isinstance(value, (pd.Timestamp, datetime, np.datetime64)):
        return str(pd.Timestamp(value))
    return _plain(value)


def _plain(label: Any) -> Any:
    """A row label as JSON has it (numpy integers are not JSON)."""
    return label.item() if hasattr(label, "item") else label


def _root_causes(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop failures that only follow from another one: checks on a missing or mistyped column, and the type of an
    int column that only its missing values made float (the not-null failure names them)."""
    missing = {f["column"] for f in failures if f["expectation"] == "expect_column_to_exist"}
    nulls = {f["column"] for f in failures if f["expectation"] == "expect_column_values_to_not_be_null"}
    failures = [f for f in failures if not (f["expectation"] == "expect_column_values_to_be_in_type_list"
                                            and f["column"] in nulls and f["unexpected_count"] == 0)]
    mistyped = {f["column"] for f in failures if f["expectation"] == "expect_column_values_to_be_in_type_list"}
    return [f for f in failures
            if not (f["column"] in missing and f["expectation"] != "expect_column_to_exist")
            and not (f["column"] in mistyped and f["expectation"] in (
                "expect_column_values_to_be_between", "expect_column_values_to_be_in_set"))]


def _for_gx(frame: pd.DataFrame, schema: SchemaConfig) -> pd.DataFrame:
    """The frame as GX checks it: datetime columns parsed (one that holds a value that does not parse stays text, so
    its type check fails and names the values); text columns as object (GX 1.x cannot match pandas 3's default
    `str` dtype in type checks)."""
    parsed = {}
    for column in schema.columns:
        if column.dtype == "datetime" and column.name in frame:
            moments, invalid = parse_datetimes(frame[column.name], column.format)
            if not invalid.any():
                parsed[column.name] = pd.Series(moments, index=frame.index)
    frame = frame.assign(**parsed) if parsed else frame
    text = [c for c in frame.columns if isinstance(frame[c].dtype, pd.StringDtype)]
    return frame.astype({c: object for c in text}) if text else frame


def frame_checker(schema: SchemaConfig, every_row: bool = False) -> Callable[[pd.DataFrame], list[dict[str, Any]]]:
    """Check frame after frame (the chunks of a large file) against the per-row suite of `schema`, without Data
    Docs: one context and suite for all calls, each call returning its frame's failures as `validate` reports
    them, the failing rows' index labels in "rows" (a few examples); with `every_row`, every failing row's label
    in "unexpected_rows" too (GX's COMPLETE result format)."""
    context = _ephemeral_context()
    batches = context.data_sources.add_pandas("frames").add_dataframe_asset("frame") \
        .add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(build_suite(schema, per_row=True))
    result_format = {"result_format": "COMPLETE" if every_row else "SUMMARY", "partial_unexpected_count": _EXAMPLES}

    def check(frame: pd.DataFrame) -> list[dict[str, Any]]:
        outcome = batches.get_batch(batch_parameters={"dataframe": _for_gx(frame, schema)}).validate(
            suite, result_format=result_format)
        return _root_causes([_failure(r, schema, frame) for r in outcome.results if not r.success])

    return check


def validate(frame: pd.DataFrame, config: ValidationConfig, output_dir: Path) -> ValidationResult:
    """Validate `frame` against the schema; raise DataValidationError if any expectation fails."""
    import great_expectations as gx

    docs_target = output_dir / DATA_DOCS
    with artifacts.atomic_dir(docs_target) as docs_tmp:
        context = _context(docs_tmp)
        batch = context.data_sources.add_pandas("pipeline").add_dataframe_asset("snapshot") \
            .add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(build_suite(config.schema))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name="schema", data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name="pipeline", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": _EXAMPLES}))
        run = checkpoint.run(batch_parameters={"dataframe": _for_gx(frame, config.schema)})
        data_docs.style_pages(docs_tmp)  # readable under the CSP the api-server serves them with
    (outcome,) = run.run_results.values()
    failures = _root_causes([_failure(r, config.schema, frame) for r in outcome.results if not r.success])
    stats = outcome.statistics
    result = ValidationResult(
        success=bool(outcome.success), evaluated=int(stats["evaluated_expectations"]),
        passed=int(stats["successful_expectations"]), rows=len(frame), failures=failures,
        data_docs=str(docs_target / "index.html"))
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("validate: %s; Data Docs: %s", result.summary(), result.data_docs)
    if not result.success:
        raise DataValidationError(failures, result.data_docs)
    return result
