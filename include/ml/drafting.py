"""Draft config.yaml, schema.yaml and params.yaml from a data file (`python main.py init`).

The draft is a starting point, not a contract: each file starts with a header saying it must be
reviewed, and every value inferred from the data carries a `# guessed: ...` comment. The command
prints the guesses grouped (data, ids, ignored, datetimes, ordinal, categories, numbers, model).
The rules (for each column the first that applies, in the order below: empty, constant, epoch,
id, bool, number; for text: datetime, ordinal, category, free text):

- separator: sniffed with csv.Sniffer over the first 64 KB (candidates `,` `;` tab `|`) unless
  given; `,` when sniffing fails.
- target: rows without a target are dropped at ingest, and the schema says so: `target: {name: ...,
  missing: drop}` with their count in the comment. The target's spec, the task, the classes, the row
  count and params.yaml come from the rows with a target; the other columns are drafted from every row
  (what they hold on the other rows is what serving may see), their missing share from the larger of
  the two. A float target whose values are all whole numbers and which has gaps (an int column read as
  float) is `int`. A text target is a `category` (with `allowed` up to MAX_CATEGORIES labels, `string`
  beyond); a true/false one a category [false, true].
- a column with no value at all is left out of the schema, with `columns_not_in_schema: ignore`
  (a column that is always missing cannot pass `max_null_fraction`).
- role ignore, constant: a column with a single value and no missing value.
- role id:
  - an id-like name (the last word of the name is id, uuid, guid or key, e.g. `flight_id`,
    `PassengerId`; or the name is index or `Unnamed: 0`, pandas' name for a nameless index column)
    with more than MAX_CATEGORIES distinct values (with fewer it stays a feature, drafted by the rules
    below: a store id with 10 stores is one);
  - an int column, or a text column whose values hold no whitespace, with a distinct value on every
    row, no missing value and at least MIN_ID_ROWS rows (not a float: measurements are often all
    distinct; not text with spaces: that is free text, below).
- bool columns (true/false, possibly with missing values) -> `category` [false, true].
- datetime:
  - text whose every value parses as a date: the format guessed by pandas' guess_datetime_format on the
    first values (month first, then day first), kept when it has a year and a month and every value
    parses with it the way the pipeline parses (serving.features.parse_datetimes, ISO 8601 accepted
    too); no format (ISO 8601) when only ISO parses. When two formats parse every value differently
    (01/02 could be either), the month-first one is written and the guess says so.
  - integers (or whole-number floats) named *time, *date, *_at, timestamp or *_ts whose every value is
    an epoch between 1990 and 2100: `format: unix` (seconds) or `unix_ms` (milliseconds). Checked before
    the ids: such a column is often distinct on every row.
  - min: the first observed day; max: the last observed instant plus the observed span again, rounded
    up to a day (new rows keep coming: a year of data accepts another year).
- ordinal: text with 3 to MAX_CATEGORIES distinct values, at most MAX_CATEGORY_SHARE of its non-null
  rows, forming a known ordered scale, `categories` listed lowest first and marked "confirm the
  order":
  - every value in one of SCALES (sizes, quality words, the Po/Fa/TA/Gd/Ex quality codes, tiers from
    basic to luxury, medals, skill levels, low-high, agreement, satisfaction, frequency, diamond clarity),
    compared case-insensitively with `_`, `-` and runs of spaces as one space; listed in the scale's order;
  - single capital letters (optionally with + or -) forming a run of at most 10 letters (or school grades
    A-D and F): grades, A the best, so listed from the last letter to A, B- before B before B+;
  - every value carrying a number not glued to a letter (`1st`, `10-20`, `<5`, `5+ years`, `$10,000`;
    not codes such as `D01`): ordered by that first number, `<`/`under`/`less than` before the
    number and `+`/`>`/`over`/`more than` after it; refused when two values tie.
- category: other text with at most MAX_CATEGORIES distinct values, at most MAX_CATEGORY_SHARE of its
  non-null rows: `allowed` the sorted values. Text with more distinct values, but at most
  MAX_CATEGORY_SHARE of its rows: an open category (no `allowed`, any value accepted).
- role ignore, free text: text with more distinct values than MAX_CATEGORY_SHARE of its non-null rows
  (names, comments, ticket codes): `dtype: string, role: ignore` (never a feature: it would be learnt
  value by value).
- encoding of a category feature: written out, as include.ml.preprocessing.encoding_for chooses it for
  the drafted family (by the number of listed values).
- int columns -> `int`; float columns -> `float`. A float column whose values are all whole numbers
  but which has missing values stays `float` (what pandas reads).
- nullable: true when the column has missing values, with `max_null_fraction` the smaller of twice
  the observed fraction and halfway from it to 1, rounded up to 2 decimals, between 0.05 and 0.99.
  The observed fraction is the larger of the whole file's and the rows with a target's.
- min/max of int and float columns:
  - a clock or calendar field keeps its natural bounds when every value lies within them, with no
    margin: the last word of the name is hour (0-23), minute or second (0-59), month (1-12), day
    (1-31), weekday / dayofweek / dow (0-6, or 1-7 when no 0 is seen), quarter (1-4), week (1-53),
    dayofyear / doy (1-366); a column of whole numbers whose name's last word is time holding hhmm
    clock times (values up to 2400 whose last two digits are below 60, some at least 100) gets 0 to
    2400;
  - any other: the observed range widened on each side by DRAFT_RANGE_MARGIN = 0.10 of that range,
    rounded outward to 4 significant digits (to whole numbers for int columns). The margin never takes
    a column whose values are all >= 0 below 0. A constant column gets +-10% of its value (+-1 for 0).
  - role id and role ignore columns get no range, no allowed list: they are never learnt from, so
    only their type and missing values are checked.
- an int classification target's min and max are the lowest and highest class seen, without a margin
  (a class the model never saw is not one it can predict).
- task: `--task` wins. Otherwise a category or string target means classification, an int target
  with <= 10 distinct values classification and any other int target regression, a float target
  regression. A classification target cannot be float and a regression target must be numeric
  (schema rules); a classification target needs every class at least twice (the split is stratified).
- min_rows: a tenth of the rows, at least 10 and at most 100.
- At least one feature must be left: otherwise init refuses, naming why each column is not one.
- config.yaml holds only what differs per dataset: data_source.uri (the data argument; a local path
  relative to the project root when it lies under it, absolute otherwise) and separator, the MLflow
  experiment and registered model named after the file (lower case, [a-z0-9-]: "Penguins Data.csv"
  -> penguins-data), and a local deployment to models/<name> on the first port from 8000 on (8080,
  Airflow's, skipped) that no sibling config dir's config.yaml (nor include/config's) uses and that
  nothing on this machine listens on now.
- params.yaml:
  - test_size 0.2 and random_state 42;
  - family: hist_gradient_boosting above LARGE_ROWS rows with a target, or when more than half the
    features are categories; random_forest otherwise, with n_estimators 200 and n_jobs -1, and
    min_samples_leaf 2 for regression, FOREST_LEAF_CLASSIFICATION for classification (leaves of a
    few rows keep the averaged probabilities away from 0 and 1, which log loss punishes);
  - classification: class_weight balanced when the rarest class is under 20 % of the rows;
  - promotion on rmse (regression) or log_loss (classification), min_improvement 1% (relative);
  - tuning enabled with timeout_seconds = 15 + rows x features / 60,000, rounded to 5 s, between 30 and
    90 (300k rows x 17 features get 90 s, to leave the whole run within 3 minutes on 2 cores), n_trials 50 as a
    cap, 3-fold CV; above LARGE_ROWS rows the search keeps to hist_gradient_boosting (a forest's trial on
    that many rows would spend the budget alone).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import socket
import urllib.parse
import warnings
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import yaml

from include.ml.components.ingestion import extract_csv, fetch, parse_csv
from include.ml.config_file import DataSourceConfig
from include.ml.configuration import CONFIG_FILES, DEFAULT_CONFIG_DIR, PROJECT_ROOT
from include.ml.entities import IngestionConfig
from include.ml.exceptions import PipelineError
from include.ml.params_file import METRICS
from include.ml.preprocessing import encoding_for
from include.ml.schema_file import TASKS, ColumnSpec
from serving.features import parse_datetimes

log = logging.getLogger(__name__)

DRAFT_RANGE_MARGIN = 0.10  # share of the observed range added on each side of min/max
SNIFF_BYTES = 64 * 1024
SEPARATORS = ",;\t|"
MAX_CATEGORIES = 50        # a text column with at most this many distinct values lists them in `allowed` ...
MAX_CATEGORY_SHARE = 0.5   # ... and with more distinct values than this share of its non-null rows is free text
MAX_CLASS_LABELS = 10      # an int target with at most this many distinct values holds class labels
MIN_ID_ROWS = 20           # a column distinct on every row is an id only in a table at least this long
LARGE_ROWS = 20_000        # above this many rows with a target: hist_gradient_boosting, and only it is tuned
FOREST_LEAF_CLASSIFICATION = 5
MINORITY_SHARE = 0.2       # a rarer smallest class gets class_weight: balanced
FIRST_PORT, SKIPPED_PORTS = 8000, (8080,)  # Airflow's API server listens on 8080
TUNING_TRIALS = 50
ID_WORDS = ("id", "uuid", "guid", "key")
ID_NAMES = ("index", "unnamed: 0")
EPOCH_NAME = re.compile(r"(time|date|_at|timestamp|_ts)$", re.IGNORECASE)
EPOCH_SECONDS = (631_152_000, 4_102_444_800)  # 1990-01-01 .. 2100-01-01
# natural bounds of clock and calendar fields, by the last word of the column's name (or the whole name)
NATURAL_BOUNDS: dict[str, tuple[int, int]] = {
    "hour": (0, 23), "minute": (0, 59), "second": (0, 59), "month": (1, 12), "day": (1, 31),
    "dayofmonth": (1, 31), "quarter": (1, 4), "week": (1, 53), "weekofyear": (1, 53),
    "dayofyear": (1, 366), "doy": (1, 366)}
WEEKDAY_NAMES = ("weekday", "dayofweek", "dow", "wday")
HHMM_MAX = 2400
SPEC_KEYS = ("dtype", "role", "nullable", "max_null_fraction", "format", "min", "max", "allowed", "categories",
             "encoding")  # the order a column's keys are written in
# Known ordered scales, lowest first; a level may have synonyms.
SCALES: dict[str, list[tuple[str, ...]]] = {
    "sizes": [("xxxs",), ("xxs",), ("xs", "extra small"), ("s", "small"), ("m", "medium"), ("l", "large"),
              ("xl", "extra large"), ("xxl",), ("xxxl",)],
    "sizes in words": [("tiny",), ("small",), ("medium",), ("large",), ("huge",)],
    "quality words": [("very poor", "very bad", "awful", "terrible"), ("poor", "bad"), ("fair", "mediocre"),
                      ("average", "ok", "okay", "satisfactory", "acceptable"), ("good",), ("very good", "great"),
                      ("excellent",), ("premium",), ("ideal", "perfect")],
    "quality codes": [("po",), ("fa",), ("ta",), ("gd",), ("ex",)],
    "tiers": [("basic", "budget", "economy"), ("standard", "regular"), ("comfort", "plus"), ("superior",),
              ("luxury", "deluxe")],
    "medals": [("bronze",), ("silver",), ("gold",), ("platinum",), ("diamond",)],
    "skill levels": [("beginner", "novice"), ("intermediate",), ("advanced",), ("expert",)],
    "low to high": [("very low",), ("low",), ("medium", "moderate", "mid", "normal"), ("high",),
                    ("very high",)],
    "agreement": [("strongly disagree",), ("disagree",), ("somewhat disagree", "slightly disagree"),
                  ("neutral", "neither agree nor disagree"), ("somewhat agree", "slightly agree"), ("agree",),
                  ("strongly agree",)],
    "satisfaction": [("very dissatisfied",), ("dissatisfied",), ("neutral",), ("satisfied",),
                     ("very satisfied",)],
    "frequency": [("never",), ("rarely", "seldom"), ("sometimes", "occasionally"), ("often", "frequently"),
                  ("usually", "mostly"), ("always",)],
    "clarity grades": [("i3",), ("i2",), ("i1",), ("si2",), ("si1",), ("vs2",), ("vs1",), ("vvs2",), ("vvs1",),
                       ("if",), ("fl",)],
}
_NUMBER = re.compile(r"(?<![A-Za-z\d.,])(-?)(\d+(?:[.,]\d+)*)")
_BELOW = re.compile(r"^\s*(<|≤|<=|under\b|less than\b|below\b|up to\b)", re.IGNORECASE)
_ABOVE = re.compile(r"(^\s*(>|≥|>=|over\b|more than\b|above\b))|(\+|\bor more\b|\band (over|above|more)\b)",
                    re.IGNORECASE)
_GRADE = re.compile(r"^([A-Z])([+-]?)$")
GROUPS = ("data", "ids", "ignored", "datetimes", "ordinal", "categories", "numbers", "model")
GROUP_TITLES = {"data": "the data", "ids": "ids (role: id, never features)",
                "ignored": "ignored (role: ignore, never features)", "datetimes": "datetimes",
                "ordinal": "ordinal: confirm the order", "categories": "categories", "numbers": "numbers",
                "model": "model, promotion and tuning (params.yaml), deployment (config.yaml)"}


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
    guesses: dict[str, list[str]]  # group (GROUPS) -> "what: guessed (why)"

    def summary(self) -> str:
        count = sum(map(len, self.guesses.values()))
        return (f"drafted {', '.join(CONFIG_FILES)} in {self.out_dir} for {self.name!r}: {self.task}, "
                f"{self.rows} rows x {self.columns} columns, {count} guesses to review")

    def report(self) -> str:
        """Every guess, grouped, for a person to review."""
        lines = [self.summary()]
        for group in GROUPS:
            if entries := self.guesses.get(group):
                lines.append(f"{GROUP_TITLES[group]} ({len(entries)}):")
                lines += [f"  {entry}" for entry in entries]
        return "\n".join(lines)


@dataclass
class _Column:
    name: str
    spec: dict[str, Any]  # its mapping in schema.yaml
    guess: str            # what was inferred, for the comment
    distinct: int
    group: str            # where the summary lists it (GROUPS)


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

    without_target = int(frame[target].isna().sum())
    labelled = frame[frame[target].notna()]
    if labelled.empty:
        raise DraftError(f"target {target!r} has no value on any of the {len(frame)} rows")
    target_column = _target(target, labelled[target], without_target > 0)
    task, task_reason = _task(target_column, task)
    if task == "classification" and target_column.spec["dtype"] == "int":  # class labels: exactly those seen
        low, high = int(labelled[target].min()), int(labelled[target].max())
        target_column.spec |= {"min": low, "max": high}
        target_column.guess = re.sub(r"observed [^,]*", f"class labels {low} to {high}", target_column.guess)
    counts = labelled[target].value_counts()
    if task == "classification" and (counts < 2).any():
        raise RareClassError(target, {_plain(k): int(n) for k, n in counts[counts < 2].items()})

    empty = [str(n) for n in frame.columns if n != target and frame[n].isna().all()]
    columns = [target_column if name == target else _column(str(name), frame[name], labelled[name])
               for name in frame.columns if str(name) not in empty]
    features = [c for c in columns if c.name != target and c.spec.get("role", "feature") == "feature"]
    if not features:
        reasons = "; ".join([f"{c.name}: {c.guess}" for c in columns if c.name != target] +
                            [f"{n}: no value" for n in empty])
        raise DraftError(f"no column of {data} can be a feature of {target!r}: {reasons}. Add feature columns, or "
                         "write the schema by hand")

    rows = len(labelled)
    model = _model(task, rows, features, labelled[target])
    for column in features:
        if column.spec["dtype"] == "category":
            spec = ColumnSpec(name=column.name, dtype="category", allowed=column.spec.get("allowed"))
            column.spec["encoding"] = encoding_for(spec, model.family)
            column.guess += f"; encoding {column.spec['encoding']} for {model.family}"

    name = _name(data)
    min_rows = min(100, max(10, rows // 10))
    port = _free_port(out_dir)
    sep_guess = None if separator else "sniffed from the first 64 KB" if sniffed else "not sniffable; assumed ','"
    guesses: dict[str, list[str]] = {group: [] for group in GROUPS}
    guesses["data"] += [*([f"data_source.separator: {source.separator!r} ({sep_guess})"] if sep_guess else []),
                        *([f"task: {task} ({task_reason})"] if task_reason else []),
                        *([f"target: {target} missing: drop ({_missing_note(without_target, len(frame))})"]
                          if without_target else []),
                        *([f"columns_not_in_schema: ignore (no value at all in {', '.join(empty)}: left out)"]
                          if empty else []),
                        f"min_rows: {min_rows} (a tenth of {rows} rows, between 10 and 100)"]
    for column in columns:
        guesses[column.group].append(f"{column.name}: {_flow(column.spec)} ({column.guess})")
    guesses["model"] += [*model.guesses, f"mlflow names, model store: {name!r} (from the file name)",
                         f"deployment.local.server_url: port {port} (free: no sibling config dir uses it, "
                         "nothing listens on it)"]
    header = (f"# Drafted by `python main.py init` from {data} on {date.today().isoformat()}.\n"
              "# REVIEW IT BEFORE USE: the values marked `# guessed:` were inferred from the data.\n")
    texts = {"config.yaml": _config_yaml(_source_uri(data), source.separator, sep_guess, name, port),
             "schema.yaml": _schema_yaml(task, task_reason, target, without_target, len(frame), min_rows, rows,
                                         columns, empty),
             "params.yaml": _params_yaml(task, model)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        try:
            with open(out_dir / file, "x", encoding="utf-8") as handle:  # "x": never overwrite
                handle.write(header + text)
        except FileExistsError as exc:
            raise OutputExistsError([out_dir / file]) from exc
    return DraftResult(out_dir, name, task, rows, len(frame.columns),
                       {group: entries for group, entries in guesses.items() if entries})


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


# --- columns ------------------------------------------------------------------------------------------------------

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


def _column(name: str, column: pd.Series, labelled: pd.Series) -> _Column:
    """A feature column's spec: role, dtype, what it may hold (the module docstring has the rules)."""
    values = column.dropna()
    distinct = int(values.nunique())
    is_int, is_float = pd.api.types.is_integer_dtype(column), pd.api.types.is_float_dtype(column)
    text = _is_text(column) and not _is_bool(column, values)
    spec: dict[str, Any] = {}
    notes: list[str] = []

    def done(group: str) -> _Column:
        _nulls(spec, notes, column, labelled)
        ordered = {key: spec[key] for key in SPEC_KEYS if key in spec}
        return _Column(name, ordered, ", ".join(notes), distinct, group)

    words = _words(name)
    kind = "text" if text else "int" if is_int else "float" if is_float else "bool"
    dtype = {"text": "string", "int": "int", "float": "float", "bool": "category"}[kind]
    if distinct == 1 and len(values) == len(column):
        spec |= {"dtype": dtype, "role": "ignore"}
        notes.append(f"constant {_plain(values.iloc[0])!r}: nothing to learn")
        return done("ignored")
    if kind in ("int", "float") and (epoch := _epoch(name, values)) is not None:
        spec |= {"dtype": "datetime", "format": epoch}
        notes.append(f"epoch {'seconds' if epoch == 'unix' else 'milliseconds'} named like a time")
        notes.append(_datetime_range(spec, parse_datetimes(values, epoch)[0]))
        return done("datetimes")
    id_name = (bool(words) and words[-1] in ID_WORDS) or name.strip().lower() in ID_NAMES
    # distinct on every row: an int, or text without spaces (text with spaces is free text, e.g. names)
    unique = distinct == len(column) and len(column) >= MIN_ID_ROWS and (
        kind == "int" or text and not values.astype(str).str.contains(r"\s").any())
    if unique and not (text and _datetime(values)):
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
            spec["min"], spec["max"], note = _number_range(words, float(finite.min()), float(finite.max()), is_int,
                                                           integral, hhmm)
            notes.append(note)
        else:
            notes.append("no finite values: review or drop the column")
        return done("numbers")
    # text
    if (found := _datetime(values)) is not None:
        fmt, note = found
        spec["dtype"] = "datetime"
        if fmt is not None:
            spec["format"] = fmt
        notes.append(note)
        notes.append(_datetime_range(spec, parse_datetimes(values, fmt)[0]))
        return done("datetimes")
    share = distinct / len(values)
    if distinct <= MAX_CATEGORIES and share <= MAX_CATEGORY_SHARE:
        observed = [str(v) for v in values.unique()]
        if (ordered := _ordinal(observed)) is not None:
            categories, scale = ordered
            spec |= {"dtype": "ordinal", "categories": categories}
            notes.append(f"ordinal: {distinct} values of a known scale ({scale}) in {len(values)} rows; confirm the "
                         "order")
            return done("ordinal")
        spec |= {"dtype": "category", "allowed": sorted({_plain(v) for v in values},
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


def _target(name: str, values: pd.Series, had_missing: bool) -> _Column:
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
            spec["min"], spec["max"], note = _number_range([], float(finite.min()), float(finite.max()), whole)
            notes.append(note)
    elif distinct <= MAX_CATEGORIES:
        spec |= {"dtype": "category", "allowed": sorted({_plain(v) for v in values},
                                                         key=lambda v: (isinstance(v, str), v))}
        notes.append(f"{distinct} distinct values in {len(values)} rows")
    else:
        spec["dtype"] = "string"
        notes.append(f"{distinct} distinct values in {len(values)} rows, too many to list")
    return _Column(name, spec, ", ".join(notes), distinct, "data")


def _plain(value: Any) -> Any:
    """A YAML-friendly value: bools and ints as they are, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return int(value) if isinstance(value, (int, np.integer)) else str(value)


# --- datetimes ----------------------------------------------------------------------------------------------------

def _datetime(values: pd.Series) -> tuple[str | None, str] | None:
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


def _epoch(name: str, values: pd.Series) -> str | None:
    """unix or unix_ms for a column of whole numbers named like a time whose values are all epochs in 1990-2100."""
    if not EPOCH_NAME.search(name.strip()) or values.empty or not bool((values == values.round()).all()):
        return None
    low, high = float(values.min()), float(values.max())
    for fmt, scale in (("unix", 1), ("unix_ms", 1000)):
        if EPOCH_SECONDS[0] * scale <= low and high <= EPOCH_SECONDS[1] * scale:
            return fmt
    return None


def _datetime_range(spec: dict[str, Any], moments: np.ndarray) -> str:
    """min: the first observed day; max: the day after the last instant, plus the observed span again."""
    present = pd.DatetimeIndex(moments[~np.isnat(moments)])
    first, last = present.min(), present.max()
    spec["min"] = first.normalize().date().isoformat()
    spec["max"] = (last + (last - first)).ceil("D").date().isoformat()
    return f"observed {first} to {last}; max leaves room for as long again"


# --- ordinal ------------------------------------------------------------------------------------------------------

def _normal(value: str) -> str:
    return " ".join(re.sub(r"[_-]+", " ", value.strip().lower()).split())


def _ordinal(values: list[str]) -> tuple[list[str], str] | None:
    """(values lowest first, the scale's name) when the values form a known ordered scale."""
    if len(values) < 3:
        return None
    normal = {v: _normal(v) for v in values}
    for scale, levels in SCALES.items():
        rank = {word: i for i, level in enumerate(levels) for word in level}
        if all(n in rank for n in normal.values()) and len({rank[n] for n in normal.values()}) == len(values):
            return sorted(values, key=lambda v: rank[normal[v]]), scale
    grades = [_GRADE.match(v.strip()) for v in values]
    if all(grades):
        letters = sorted({m.group(1) for m in grades if m})
        span = ord(letters[-1]) - ord(letters[0]) + 1
        school = set(letters) <= set("ABCDF") and "F" in letters and "E" not in letters
        if (len(letters) == span or school) and span <= 10 and len({v.strip() for v in values}) == len(values):
            sign = {"-": 0, "": 1, "+": 2}  # A is the best grade: lowest first is the last letter first, B- < B < B+
            return sorted(values, key=lambda v: (-ord(v.strip()[0]), sign[v.strip()[1:]])), "letter grades, A best"
    keys = [_number_key(v) for v in values]
    if all(k is not None for k in keys) and len(set(keys)) == len(values):
        return [v for _, v in sorted(zip(keys, values))], "values ordered by their number"  # type: ignore[type-var]
    return None


def _number_key(value: str) -> tuple[float, int] | None:
    """The first number of `value` not glued to a letter, and -1 / 0 / +1 for below / at / above it."""
    match = _NUMBER.search(value)
    if match is None:
        return None
    digits = match.group(2)
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", digits):
        digits = digits.replace(",", "")
    try:
        number = float(match.group(1) + digits.replace(",", "."))
    except ValueError:
        return None
    side = -1 if _BELOW.search(value) else 1 if _ABOVE.search(value) else 0
    return number, side


# --- numbers ------------------------------------------------------------------------------------------------------

def _number_range(words: list[str], lo: float, hi: float, whole: bool, integral: bool = False,
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


# --- task and model -----------------------------------------------------------------------------------------------

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


@dataclass
class _Model:
    task: str
    family: str
    family_reason: str
    hyperparameters: list[tuple[str, Any, str | None]]  # name, value, comment
    timeout: int
    families: list[str] | None  # tuning.families; None: all
    guesses: list[str] = field(default_factory=list)


def _model(task: str, rows: int, features: list[_Column], target: pd.Series) -> _Model:
    """The family, its hyperparameters and the tuning budget, from the size and the kinds of features."""
    categories = sum(c.spec["dtype"] == "category" for c in features)
    if rows > LARGE_ROWS:
        family, reason = "hist_gradient_boosting", f"{rows:,} rows, above {LARGE_ROWS:,}"
    elif categories > len(features) / 2:
        family, reason = "hist_gradient_boosting", f"{categories} of {len(features)} features are categories"
    else:
        family, reason = "random_forest", f"{rows:,} rows, {categories} of {len(features)} features categories"
    hyper: list[tuple[str, Any, str | None]] = []
    if family == "random_forest":
        hyper += [("n_estimators", 200, None), ("n_jobs", -1, "every core")]
        if task == "classification":
            hyper.append(("min_samples_leaf", FOREST_LEAF_CLASSIFICATION,
                          "guessed: leaves of a few rows keep probabilities off 0 and 1 (log loss)"))
        else:
            hyper.append(("min_samples_leaf", 2, None))
    guesses = [f"model.family: {family} ({reason})"]
    if task == "classification":
        shares = target.value_counts(normalize=True)
        rarest, share = shares.index[-1], float(shares.iloc[-1])
        if share < MINORITY_SHARE:
            note = f"the rarest class {_plain(rarest)!r} is {share:.1%} of the rows, under {MINORITY_SHARE:.0%}"
            hyper.append(("class_weight", "balanced", f"guessed: {note}"))
            guesses.append(f"model.hyperparameters.class_weight: balanced ({note})")
    cells = rows * len(features)
    timeout = int(min(90, max(30, 5 * round((15 + cells / 60_000) / 5))))
    families = ["hist_gradient_boosting"] if rows > LARGE_ROWS else None
    guesses.append(f"tuning: on, timeout_seconds {timeout} ({rows:,} rows x {len(features)} features), "
                   f"n_trials {TUNING_TRIALS} as a cap"
                   + (", hist_gradient_boosting only (a forest's trial on this many rows would use the budget alone)"
                      if families else ", every family"))
    return _Model(task, family, reason, hyper, timeout, families, guesses)


# --- names, ports, files ------------------------------------------------------------------------------------------

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


def _ports_in_use(out_dir: Path) -> set[int]:
    """The server ports named by the config.yaml of out_dir's siblings and of the shipped config dir."""
    ports = set()
    parent = out_dir.resolve().parent
    files = [*parent.glob("*/config.yaml"), DEFAULT_CONFIG_DIR / "config.yaml"] if parent.is_dir() else \
        [DEFAULT_CONFIG_DIR / "config.yaml"]
    for path in files:
        try:
            url = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("deployment") or {}) \
                .get("local", {}).get("server_url") or "http://127.0.0.1:8000"
            ports.add(urllib.parse.urlparse(str(url)).port or 80)
        except (OSError, yaml.YAMLError, AttributeError, ValueError):
            continue  # not a config we can read: it claims no port
    return ports


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port(out_dir: Path) -> int:
    used = _ports_in_use(out_dir)
    for port in range(FIRST_PORT, 65536):
        if port not in used and port not in SKIPPED_PORTS and not _listening(port):
            return port
    raise DraftError("no free port from 8000 on for deployment.local.server_url")


def _flow(value: Any) -> str:
    """A YAML scalar or flow-style collection on one line, quoted where YAML needs it."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=2**31)
    return text.strip().removesuffix("...").strip()


def _aligned(rows: list[tuple[str, str | None]]) -> str:
    """Lines with their trailing `# comment`s aligned."""
    width = max((len(text) for text, comment in rows if comment), default=0)
    return "\n".join(f"{text:<{width}}  # {comment}" if comment else text for text, comment in rows)


def _missing_note(missing: int, rows: int) -> str:
    return f"{missing} of {rows} rows have no target: dropped at ingest"


def _config_yaml(uri: str, separator: str, sep_guess: str | None, name: str, port: int) -> str:
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
    server_url: http://127.0.0.1:{port}  # guessed: a free port, used by no sibling config dir
"""


def _schema_yaml(task: str, task_reason: str | None, target: str, without_target: int, file_rows: int,
                 min_rows: int, rows: int, columns: list[_Column], empty: list[str]) -> str:
    other = {"regression": "classification", "classification": "regression"}[task]
    override = f"; use --task {other} to override" if task_reason and task_reason.startswith("int") else ""
    task_comment = f"guessed: {task} ({task_reason}){override}" if task_reason else "given with --task"
    target_line = (f"target: {_flow({'name': target, 'missing': 'drop'})}",
                   f"guessed: {_missing_note(without_target, file_rows)} (missing: error refuses them)") \
        if without_target else (f"target: {_flow(target)}", None)
    extra = [("columns_not_in_schema: ignore", f"guessed: no value at all in {', '.join(empty)}: left out")] \
        if empty else []
    top = _aligned([(f"task: {task}", task_comment), target_line,
                    (f"min_rows: {min_rows}", f"guessed: a tenth of the {rows} rows, between 10 and 100"), *extra])
    keys = [f"  {_flow(c.name)}:" for c in columns]
    width = max(map(len, keys))
    specs = _aligned([(f"{key:<{width}} {_flow(c.spec)}", f"guessed: {c.guess}") for key, c in zip(keys, columns)])
    return f"""\
# The dataset's contract; include/config/schema.yaml documents every key.
# The rules behind the guesses: the docstring of include/ml/drafting.py.

{top}

columns:
  # guessed: every role, dtype, nullable, allowed, categories, format, encoding and min/max
{specs}
"""


def _params_yaml(task: str, model: _Model) -> str:
    regression = task == "regression"
    metrics = f"{task}: {' | '.join(METRICS[task])}"
    hyper = _aligned([(f"    {name}: {_flow(value)}", comment) for name, value, comment in model.hyperparameters]) \
        if model.hyperparameters else None
    families = f"\n  families: {_flow(model.families)}  # guessed: a forest's trial on this many rows would " \
               "use the budget alone" if model.families else ""
    return f"""\
# How the model is trained and promoted; include/config/params.yaml documents every key.

split:
  test_size: 0.2{"" if regression else "  # stratified by class"}
  random_state: 42

model:
  # elasticnet | random_forest | extra_trees | hist_gradient_boosting
  family: {model.family}  # guessed: {model.family_reason}
  random_state: 42
  hyperparameters:{f"{chr(10)}{hyper}" if hyper else " {}"}

promotion:
  metric: {"rmse" if regression else "log_loss"}  # {metrics}
  min_improvement: 1%  # relative: the challenger must beat the champion by 1 % of the champion's value

# An Optuna search before training; the timeout is the budget, n_trials a cap (docs/pipeline.md#tuning).
tuning:
  enabled: true
  timeout_seconds: {model.timeout}  # guessed: scaled to rows x features
  n_trials: {TUNING_TRIALS}
  cv_folds: 3{families}
"""
