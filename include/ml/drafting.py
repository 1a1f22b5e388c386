"""Draft config.yaml, schema.yaml and params.yaml from a data file (`python main.py init`).

The draft is a starting point, not a contract: each file starts with a header saying it must be
reviewed, and every value inferred from the data carries a `# guessed: ...` comment. The rules:

- separator: sniffed with csv.Sniffer over the first 64 KB (candidates `,` `;` tab `|`) unless
  given; `,` when sniffing fails.
- dtype of each column:
  - bool columns (true/false, possibly with missing values) -> `category`, allowed [false, true];
  - text columns with few distinct values (<= 50, and <= 50% of the non-null rows) -> `category`
    with `allowed:` the sorted distinct values (as strings unless they are ints);
  - other text columns -> `string`;
  - integer columns -> `int`; float columns -> `float`. A float column whose values are all whole
    numbers but which has missing values stays `float`: pandas reads an int column with gaps as
    float, and int columns must not be nullable.
- nullable: true when the column has missing values, with `max_null_fraction` twice the observed
  fraction rounded up to 2 decimals, at least 0.05 and at most 0.9.
- min/max of int and float columns: the observed range widened on each side by
  DRAFT_RANGE_MARGIN = 0.10 of that range, rounded outward to 4 significant digits (to whole
  numbers for int columns). The margin never takes a column whose values are all >= 0 below 0
  (counts and concentrations stay non-negative). A constant column gets +-10% of its value
  (+-1 for 0).
- task: `--task` wins. Otherwise a category or string target means classification, an int target
  with <= 10 distinct values classification and any other int target regression, a float target
  regression. A classification target cannot be float and a regression target must be numeric
  (schema rules); the target cannot have missing values; a classification target needs every
  class at least twice, as the split is stratified.
- min_rows: a tenth of the rows, at least 10 and at most 100.
- config.yaml holds only what differs per dataset: data_source.uri (the data argument; a local path
  relative to the project root when it lies under it, absolute otherwise) and separator, the MLflow
  experiment and registered model named after the file (lower case, [a-z0-9-]: "Penguins Data.csv"
  -> penguins-data), and a local deployment to models/<name>. Every other key keeps the default
  documented in include/config/config.yaml.
- params.yaml: test_size 0.2 and random_state 42; random_forest with random_state 42 and
  n_estimators 100 (plus min_samples_leaf 2 for regression); promotion on rmse (regression) or
  f1_macro (classification) with min_improvement 0.001.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import urllib.parse
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import yaml

from include.ml.components.ingestion import extract_csv, fetch, parse_csv
from include.ml.configuration import CONFIG_FILES, PROJECT_ROOT
from include.ml.entities import TASKS, DataSourceConfig, IngestionConfig
from include.ml.exceptions import PipelineError

log = logging.getLogger(__name__)

DRAFT_RANGE_MARGIN = 0.10  # share of the observed range added on each side of min/max
SNIFF_BYTES = 64 * 1024
SEPARATORS = ",;\t|"
MAX_CATEGORIES = 50        # a text column with at most this many distinct values ...
MAX_CATEGORY_SHARE = 0.5   # ... which are at most this share of its non-null rows is a category
MAX_CLASS_LABELS = 10      # an int target with at most this many distinct values holds class labels


class DraftError(PipelineError):
    """The data cannot be drafted into a valid configuration."""


class OutputExistsError(DraftError):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        super().__init__(f"refusing to overwrite {', '.join(map(str, paths))}: remove them or choose another directory")


class UnknownTargetError(DraftError):
    def __init__(self, target: str, columns: list[str]) -> None:
        self.target, self.columns = target, columns
        super().__init__(f"target {target!r} is not a column of the data; its columns: {', '.join(map(repr, columns))}")


class RareClassError(DraftError):
    def __init__(self, target: str, counts: dict[Any, int]) -> None:
        self.target, self.counts = target, counts
        super().__init__(f"classification target {target!r} has classes seen only once: {sorted(counts, key=str)}; "
                         "the split is stratified and needs every class at least twice: drop or merge those rows")


@dataclass(frozen=True)
class DraftResult:
    out_dir: Path
    name: str
    task: str
    rows: int
    columns: int
    guesses: list[str]  # "column: what was guessed"

    def summary(self) -> str:
        return (f"drafted {', '.join(CONFIG_FILES)} in {self.out_dir} for {self.name!r}: {self.task}, "
                f"{self.rows} rows x {self.columns} columns, {len(self.guesses)} guesses to review")


@dataclass(frozen=True)
class _Column:
    name: str
    spec: dict[str, Any]  # its mapping in schema.yaml
    guess: str            # what was inferred, for the comment
    distinct: int


def draft_config(data: str, target: str, out_dir: Path, task: str | None = None,
                 separator: str | None = None) -> DraftResult:
    """Read the CSV at `data` (path, http(s):// or s3:// URI; CSV or zip) and write the three YAML files."""
    out_dir = Path(out_dir)
    if existing := [out_dir / name for name in CONFIG_FILES if (out_dir / name).exists()]:
        raise OutputExistsError(existing)
    if task is not None and task not in TASKS:
        raise DraftError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if separator is not None and len(separator) != 1:
        raise DraftError(f"the separator must be a single character, got {separator!r}")
    uri = data if "://" in data else str(Path(data).expanduser().resolve())
    fetching = _source(uri, separator or ",")
    raw = extract_csv(fetch(fetching), fetching)
    sniffed = None if separator else _sniff(raw)
    source = _source(uri, separator or sniffed or ",")
    frame = parse_csv(raw, IngestionConfig(source=source, expected_columns=()))
    if frame.shape[1] < 2:
        raise DraftError(f"{data} parsed into one column {str(frame.columns[0])[:60]!r} with separator "
                         f"{source.separator!r}; a target and at least one feature are needed: pass the separator")
    if target not in frame.columns:
        raise UnknownTargetError(target, [str(c) for c in frame.columns])

    columns = [_column(str(name), frame[name]) for name in frame.columns]
    target_column = next(c for c in columns if c.name == target)
    if target_column.spec.get("nullable"):
        raise DraftError(f"target {target!r} has {int(frame[target].isna().sum())} missing values and cannot be "
                         "nullable: drop those rows first")
    task, task_reason = _task(target_column, task)
    counts = frame[target].value_counts()
    if task == "classification" and (counts < 2).any():
        raise RareClassError(target, {_plain(k): int(n) for k, n in counts[counts < 2].items()})

    name, rows = _name(data), len(frame)
    min_rows = min(100, max(10, rows // 10))
    sep_guess = None if separator else "sniffed from the first 64 KB" if sniffed else "not sniffable; assumed ','"
    guesses = [*([f"data_source.separator: {source.separator!r} {sep_guess}"] if sep_guess else []),
               f"mlflow names, model store: {name!r} from the file name",
               *([f"task: {task} ({task_reason})"] if task_reason else []),
               f"min_rows: {min_rows} (a tenth of {rows} rows, between 10 and 100)",
               *(f"{c.name}: {_flow(c.spec)} ({c.guess})" for c in columns)]
    header = (f"# Drafted by `python main.py init` from {data} on {date.today().isoformat()}.\n"
              "# REVIEW IT BEFORE USE: the values marked `# guessed:` were inferred from the data.\n")
    texts = {"config.yaml": _config_yaml(_source_uri(data), source.separator, sep_guess, name),
             "schema.yaml": _schema_yaml(task, task_reason, target, min_rows, rows, columns),
             "params.yaml": _params_yaml(task)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        try:
            with open(out_dir / file, "x", encoding="utf-8") as handle:  # "x": never overwrite
                handle.write(header + text)
        except FileExistsError as exc:
            raise OutputExistsError([out_dir / file]) from exc
    return DraftResult(out_dir, name, task, rows, len(columns), guesses)


def _source(uri: str, separator: str) -> DataSourceConfig:
    return DataSourceConfig(uri=uri, separator=separator, zip_member=None, s3_endpoint_url=None, timeout_seconds=30.0)


def _sniff(raw: bytes) -> str | None:
    sample = raw[:SNIFF_BYTES].decode("utf-8", errors="replace").lstrip("\ufeff")
    if len(raw) > SNIFF_BYTES and "\n" in sample:
        sample = sample[:sample.rfind("\n") + 1]  # whole lines only
    try:
        return csv.Sniffer().sniff(sample, delimiters=SEPARATORS).delimiter
    except csv.Error:
        log.debug("could not sniff the separator of the first %d characters", len(sample))
        return None


def _column(name: str, column: pd.Series) -> _Column:
    values = column.dropna()
    missing, distinct = len(column) - len(values), int(values.nunique())
    is_int, is_float = pd.api.types.is_integer_dtype(column), pd.api.types.is_float_dtype(column)
    spec: dict[str, Any] = {}
    notes: list[str] = []
    allowed: list[Any] | None = None
    if pd.api.types.is_bool_dtype(column) or (len(values) and all(isinstance(v, (bool, np.bool_)) for v in values)):
        spec["dtype"], allowed = "category", sorted({bool(v) for v in values})
        notes.append("true/false values")
    elif is_int or is_float:
        spec["dtype"] = "int" if is_int else "float"
        if missing and is_float and len(values) and bool((values == values.round()).all()):
            notes.append("whole numbers with missing values, kept float")
    elif distinct <= MAX_CATEGORIES and distinct <= MAX_CATEGORY_SHARE * len(values):
        spec["dtype"] = "category"
        allowed = sorted({_plain(v) for v in values}, key=lambda v: (isinstance(v, str), v))
        notes.append(f"{distinct} distinct values in {len(values)} rows")
    else:
        spec["dtype"] = "string"
        notes.append(f"{distinct} distinct values in {len(values)} rows, too many for a category")
    if missing:
        spec["nullable"] = True
        spec["max_null_fraction"] = max(0.05, min(0.9, math.ceil(round(200 * missing / len(column), 9)) / 100))
        notes.append(f"{missing} of {len(column)} missing")
    if is_int or is_float:
        finite = values[np.isfinite(values.astype(float))]
        if len(finite):
            spec["min"], spec["max"], note = _range(float(finite.min()), float(finite.max()), is_int)
            notes.append(note)
        else:
            notes.append("no values: review or drop the column")
    if allowed is not None:
        spec["allowed"] = allowed
    return _Column(name, spec, ", ".join(notes), distinct)


def _plain(value: Any) -> Any:
    """A YAML-friendly value: bools and ints as they are, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return int(value) if isinstance(value, (int, np.integer)) else str(value)


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


def _task(target: _Column, forced: str | None) -> tuple[str, str | None]:
    """The task and, when it was guessed, why."""
    dtype = target.spec["dtype"]
    if forced == "classification" and dtype == "float":
        raise DraftError(f"target {target.name!r} is a float column and a classification target cannot be float; "
                         "use --task regression, or write the labels as ints or text")
    if forced == "regression" and dtype not in ("int", "float"):
        raise DraftError(f"target {target.name!r} is a {dtype} column and a regression target must be numeric; "
                         "use --task classification")
    if forced:
        return forced, None
    if dtype in ("category", "string"):
        return "classification", f"{dtype} target"
    if dtype == "int":
        task = "classification" if target.distinct <= MAX_CLASS_LABELS else "regression"
        return task, f"int target with {target.distinct} distinct values"
    return "regression", "float target"


def _name(data: str) -> str:
    path = urllib.parse.unquote(urllib.parse.urlparse(data).path) if "://" in data else data.replace("\\", "/")
    stem = PurePosixPath(path).name
    while (suffix := PurePosixPath(stem).suffix.lower()) in (".zip", ".csv", ".tsv", ".txt"):
        stem = stem[:-len(suffix)]
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "dataset"


def _source_uri(data: str) -> str:
    if "://" in data:
        return data
    path = Path(data).expanduser().resolve()
    return path.relative_to(PROJECT_ROOT).as_posix() if path.is_relative_to(PROJECT_ROOT) else str(path)


def _flow(value: Any) -> str:
    """A YAML scalar or flow-style collection on one line, quoted where YAML needs it."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=2**31)
    return text.strip().removesuffix("...").strip()


def _aligned(rows: list[tuple[str, str | None]]) -> str:
    """Lines with their trailing `# comment`s aligned."""
    width = max((len(text) for text, comment in rows if comment), default=0)
    return "\n".join(f"{text:<{width}}  # {comment}" if comment else text for text, comment in rows)


def _config_yaml(uri: str, separator: str, sep_guess: str | None, name: str) -> str:
    named = "guessed: from the file name"
    source = _aligned([(f"  uri: {_flow(uri)}", None),
                       (f"  separator: {json.dumps(separator)}", sep_guess and f"guessed: {sep_guess}")])
    mlflow = _aligned([(f"  experiment_name: {_flow(name)}", named),
                       (f"  registered_model_name: {_flow(name)}", named)])
    return f"""\
# Only what differs per dataset is here; every other key keeps its default.
# include/config/config.yaml is the reference of every key and its default.

data_source:
  # A local path (relative to the project root), an http(s):// or s3:// URI; CSV or zip.
{source}

mlflow:
{mlflow}

deployment:
  target: local  # local | ec2 | none, see include/config/config.yaml
  local:
    model_store: {_flow(f"models/{name}")}
    server_url: http://127.0.0.1:8000
"""


def _schema_yaml(task: str, task_reason: str | None, target: str, min_rows: int, rows: int,
                 columns: list[_Column]) -> str:
    other = {"regression": "classification", "classification": "regression"}[task]
    override = f"; use --task {other} to override" if task_reason and task_reason.startswith("int") else ""
    task_comment = f"guessed: {task} ({task_reason}){override}" if task_reason else "given with --task"
    top = _aligned([(f"task: {task}", task_comment),
                    (f"target: {_flow(target)}", None),
                    (f"min_rows: {min_rows}", f"guessed: a tenth of the {rows} rows, between 10 and 100")])
    keys = [f"  {_flow(c.name)}:" for c in columns]
    width = max(map(len, keys))
    specs = _aligned([(f"{key:<{width}} {_flow(c.spec)}", f"guessed: {c.guess}") for key, c in zip(keys, columns)])
    return f"""\
# The dataset's contract; include/config/schema.yaml documents every key.
# The rules behind the guesses: the docstring of include/ml/drafting.py.

{top}

columns:
  # guessed: every dtype, nullable, allowed and min/max (observed range +{DRAFT_RANGE_MARGIN:.0%} each side)
{specs}
"""


def _params_yaml(task: str) -> str:
    regression = task == "regression"
    metrics = "regression: rmse | mae | r2" if regression else "classification: accuracy | f1_macro | roc_auc"
    leaf = "\n    min_samples_leaf: 2" if regression else ""
    return f"""\
# How the model is trained and promoted; include/config/params.yaml documents every key.

split:
  test_size: 0.2{"" if regression else "  # stratified by class"}
  random_state: 42

model:
  family: random_forest  # elasticnet | random_forest | extra_trees | hist_gradient_boosting
  random_state: 42
  hyperparameters:
    n_estimators: 100{leaf}

promotion:
  metric: {"rmse" if regression else "f1_macro"}  # {metrics}
  min_improvement: 0.001
"""
