"""The task and the model `python main.py init` drafts into params.yaml: classification or regression from the
target, the family and its hyperparameters from the table's size and kinds of features, the tuning budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from include.ml.draft_columns import DraftedColumn, plain_value
from include.ml.exceptions import DraftError

MAX_CLASS_LABELS = 10      # an int target with at most this many distinct values holds class labels
LARGE_ROWS = 20_000        # above this many rows with a target: hist_gradient_boosting, and only it is tuned
FOREST_LEAF_CLASSIFICATION = 5
MINORITY_SHARE = 0.2       # a rarer smallest class gets class_weight: balanced
TUNING_TRIALS = 50


def choose_task(target: DraftedColumn, forced: str | None) -> tuple[str, str | None]:
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
class DraftedModel:
    task: str
    family: str
    family_reason: str
    hyperparameters: list[tuple[str, Any, str | None]]  # name, value, comment
    timeout: int
    families: list[str] | None  # tuning.families; None: all
    guesses: list[str] = field(default_factory=list)


def choose_model(task: str, rows: int, features: list[DraftedColumn], target: pd.Series) -> DraftedModel:
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
            note = f"the rarest class {plain_value(rarest)!r} is {share:.1%} of the rows, under {MINORITY_SHARE:.0%}"
            hyper.append(("class_weight", "balanced", f"guessed: {note}"))
            guesses.append(f"model.hyperparameters.class_weight: balanced ({note})")
    cells = rows * len(features)
    timeout = int(min(90, max(30, 5 * round((15 + cells / 60_000) / 5))))
    families = ["hist_gradient_boosting"] if rows > LARGE_ROWS else None
    guesses.append(f"tuning: on, timeout_seconds {timeout} ({rows:,} rows x {len(features)} features), "
                   f"n_trials {TUNING_TRIALS} as a cap"
                   + (", hist_gradient_boosting only (a forest's trial on this many rows would use the budget alone)"
                      if families else ", every family"))
    return DraftedModel(task, family, reason, hyper, timeout, families, guesses)
