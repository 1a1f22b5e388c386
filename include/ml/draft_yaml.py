"""The text of the three drafted YAML files (config.yaml, schema.yaml, params.yaml), every guess with its
`# guessed: ...` comment aligned beside it.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from include.ml.draft_columns import DraftedColumn
from include.ml.draft_model import TUNING_TRIALS, DraftedModel
from include.ml.params_file import METRICS


def yaml_flow(value: Any) -> str:
    """A YAML scalar or flow-style collection on one line, quoted where YAML needs it."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=2**31)
    return text.strip().removesuffix("...").strip()


def _aligned(rows: list[tuple[str, str | None]]) -> str:
    """Lines with their trailing `# comment`s aligned."""
    width = max((len(text) for text, comment in rows if comment), default=0)
    return "\n".join(f"{text:<{width}}  # {comment}" if comment else text for text, comment in rows)


def missing_note(missing: int, rows: int) -> str:
    return f"{missing} of {rows} rows have no target: dropped at ingest"


def config_yaml(uri: str, separator: str, sep_guess: str | None, name: str, port: int) -> str:
    named = "guessed: from the file name"
    source = _aligned([(f"  uri: {yaml_flow(uri)}", None),
                       (f"  separator: {json.dumps(separator)}", sep_guess and f"guessed: {sep_guess}")])
    mlflow = _aligned([(f"  experiment_name: {yaml_flow(name)}", named),
                       (f"  registered_model_name: {yaml_flow(name)}", named)])
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
    model_store: {yaml_flow(f"models/{name}")}
    server_url: http://127.0.0.1:{port}  # guessed: a free port, used by no sibling config dir
"""


def schema_yaml(task: str, task_reason: str | None, target: str, without_target: int, file_rows: int,
                 min_rows: int, rows: int, columns: list[DraftedColumn], empty: list[str]) -> str:
    other = {"regression": "classification", "classification": "regression"}[task]
    override = f"; use --task {other} to override" if task_reason and task_reason.startswith("int") else ""
    task_comment = f"guessed: {task} ({task_reason}){override}" if task_reason else "given with --task"
    target_line = (f"target: {yaml_flow({'name': target, 'missing': 'drop'})}",
                   f"guessed: {missing_note(without_target, file_rows)} (missing: error refuses them)") \
        if without_target else (f"target: {yaml_flow(target)}", None)
    extra = [("columns_not_in_schema: ignore", f"guessed: no value at all in {', '.join(empty)}: left out")] \
        if empty else []
    top = _aligned([(f"task: {task}", task_comment), target_line,
                    (f"min_rows: {min_rows}", f"guessed: a tenth of the {rows} rows, between 10 and 100"), *extra])
    keys = [f"  {yaml_flow(c.name)}:" for c in columns]
    width = max(map(len, keys))
    specs = _aligned([(f"{key:<{width}} {yaml_flow(c.spec)}", f"guessed: {c.guess}") for key, c in zip(keys, columns)])
    return f"""\
# The dataset's contract; include/config/schema.yaml documents every key.
# The rules behind the guesses: the docstring of include/ml/drafting.py.

{top}

columns:
  # guessed: every role, dtype, nullable, allowed, categories, format, encoding and min/max
{specs}
"""


def params_yaml(task: str, model: DraftedModel) -> str:
    regression = task == "regression"
    metrics = f"{task}: {' | '.join(METRICS[task])}"
    hyper = _aligned([(f"    {name}: {yaml_flow(value)}", comment) for name, value, comment in model.hyperparameters]) \
        if model.hyperparameters else None
    families = f"\n  families: {yaml_flow(model.families)}  # guessed: a forest's trial on this many rows would " \
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
