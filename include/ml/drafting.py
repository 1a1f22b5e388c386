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

This module reads the table and writes the files; the rules live in draft_columns.py (each column's role, dtype
and missing values), draft_dates.py (datetime formats, epochs, their range), draft_ordinals.py (ordered scales),
draft_ranges.py (number ranges), draft_model.py (task, family, tuning budget), draft_names.py (dataset name,
source URI, server port) and draft_yaml.py (the files' text). The errors are in exceptions.py.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from include.ml.components.ingestion import extract_csv, fetch, parse_csv
from include.ml.config_file import DataSourceConfig
from include.ml.configuration import CONFIG_FILES
from include.ml.draft_columns import draft_column, draft_target, plain_value
from include.ml.draft_model import choose_model, choose_task
from include.ml.draft_names import dataset_name, free_port, source_uri
from include.ml.draft_yaml import config_yaml, missing_note, params_yaml, schema_yaml, yaml_flow
from include.ml.entities import IngestionConfig
from include.ml.exceptions import DraftError, OutputExistsError, RareClassError, UnknownTargetError
from include.ml.preprocessing import encoding_for
from include.ml.schema_file import TASKS, ColumnSpec

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
SEPARATORS = ",;\t|"
GROUPS = ("data", "ids", "ignored", "datetimes", "ordinal", "categories", "numbers", "model")
GROUP_TITLES = {"data": "the data", "ids": "ids (role: id, never features)",
                "ignored": "ignored (role: ignore, never features)", "datetimes": "datetimes",
                "ordinal": "ordinal: confirm the order", "categories": "categories", "numbers": "numbers",
                "model": "model, promotion and tuning (params.yaml), deployment (config.yaml)"}


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
    target_column = draft_target(target, labelled[target], without_target > 0)
    task, task_reason = choose_task(target_column, task)
    if task == "classification" and target_column.spec["dtype"] == "int":  # class labels: exactly those seen
        low, high = int(labelled[target].min()), int(labelled[target].max())
        target_column.spec |= {"min": low, "max": high}
        target_column.guess = re.sub(r"observed [^,]*", f"class labels {low} to {high}", target_column.guess)
    counts = labelled[target].value_counts()
    if task == "classification" and (counts < 2).any():
        raise RareClassError(target, {plain_value(k): int(n) for k, n in counts[counts < 2].items()})

    empty = [str(n) for n in frame.columns if n != target and frame[n].isna().all()]
    columns = [target_column if name == target else draft_column(str(name), frame[name], labelled[name])
               for name in frame.columns if str(name) not in empty]
    features = [c for c in columns if c.name != target and c.spec.get("role", "feature") == "feature"]
    if not features:
        reasons = "; ".join([f"{c.name}: {c.guess}" for c in columns if c.name != target] +
                            [f"{n}: no value" for n in empty])
        raise DraftError(f"no column of {data} can be a feature of {target!r}: {reasons}. Add feature columns, or "
                         "write the schema by hand")

    rows = len(labelled)
    model = choose_model(task, rows, features, labelled[target])
    for column in features:
        if column.spec["dtype"] == "category":
            spec = ColumnSpec(name=column.name, dtype="category", allowed=column.spec.get("allowed"))
            column.spec["encoding"] = encoding_for(spec, model.family)
            column.guess += f"; encoding {column.spec['encoding']} for {model.family}"

    name = dataset_name(data)
    min_rows = min(100, max(10, rows // 10))
    port = free_port(out_dir)
    sep_guess = None if separator else "sniffed from the first 64 KB" if sniffed else "not sniffable; assumed ','"
    guesses: dict[str, list[str]] = {group: [] for group in GROUPS}
    guesses["data"] += [*([f"data_source.separator: {source.separator!r} ({sep_guess})"] if sep_guess else []),
                        *([f"task: {task} ({task_reason})"] if task_reason else []),
                        *([f"target: {target} missing: drop ({missing_note(without_target, len(frame))})"]
                          if without_target else []),
                        *([f"columns_not_in_schema: ignore (no value at all in {', '.join(empty)}: left out)"]
                          if empty else []),
                        f"min_rows: {min_rows} (a tenth of {rows} rows, between 10 and 100)"]
    for column in columns:
        guesses[column.group].append(f"{column.name}: {yaml_flow(column.spec)} ({column.guess})")
    guesses["model"] += [*model.guesses, f"mlflow names, model store: {name!r} (from the file name)",
                         f"deployment.local.server_url: port {port} (free: no sibling config dir uses it, "
                         "nothing listens on it)"]
    header = (f"# Drafted by `python main.py init` from {data} on {date.today().isoformat()}.\n"
              "# REVIEW IT BEFORE USE: the values marked `# guessed:` were inferred from the data.\n")
    texts = {"config.yaml": config_yaml(source_uri(data), source.separator, sep_guess, name, port),
             "schema.yaml": schema_yaml(task, task_reason, target, without_target, len(frame), min_rows, rows,
                                         columns, empty),
             "params.yaml": params_yaml(task, model)}
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
