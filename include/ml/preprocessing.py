"""How each column of schema.yaml becomes the model's inputs, and what those inputs cost in memory.

The preprocessing is the first step of every fitted pipeline (training, tuning's folds, the served model), built
from the schema and the model family:

- float, int: as they are for hist_gradient_boosting (it splits on missing values itself); median-imputed for the
  forests; imputed and scaled for elasticnet. Every numeric-like input below is then treated the same way.
- datetime: year, month, day, day of week and hour (with `cyclical`, also the sine and cosine of the periodic ones).
- ordinal: the position in `categories` (0, 1, ...); unknown and missing values are missing.
- category, onehot: one column per value, sparse where the family takes sparse input; with min_frequency or
  max_categories the rare values share one column.
- category, target: scikit-learn's TargetEncoder, cross-fitted on the training rows (5 seeded folds).
- category, native: hist_gradient_boosting's own categorical splits (the other families have none and get the
  automatic choice).

`encoding` left out is chosen by cardinality and family (`encoding_for`). The memory guard (`check_memory`) runs
before every fit: it estimates the size of the encoded matrix from the schema and the rows, and refuses, with a
ConfigError naming the widest columns and the fixes, a fit that would not fit in the machine's available memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml.exceptions import ConfigError
from include.ml.schema_file import ColumnSpec, SchemaConfig
from serving.features import PARTS, PERIODS, DatetimeFeatures

NATIVE = "hist_gradient_boosting"  # the one family with categorical splits of its own
NATIVE_MAX = 255  # HistGradientBoosting's limit (max_bins); more values: the rarest share one code
ONEHOT_MAX = 30  # automatic choice: one-hot up to this many listed values, target encoding beyond
TARGET_FOLDS = 5
FIT_COPIES = 3  # the encoded matrix, the estimator's own converted copy, and what its fit allocates besides
MEMORY_SHARE = 0.8  # of the available memory, what a fit may plan to use
# The types outside skops' defaults that the preprocessing may hold, whatever the family (serving/trust.py has them).
PREPROCESSING_SKOPS_TYPES = ("serving.features.DatetimeFeatures", "sklearn.model_selection._split.KFold",
                             "sklearn.model_selection._split.StratifiedKFold")
SPARSE_THRESHOLD = 0.3  # ColumnTransformer's default: sparse output when fewer than 30 % of its values are non-zero


def encoding_for(column: ColumnSpec, family: str) -> str:
    """onehot | target | native for a category column: its own `encoding`, else by cardinality and family.
    `native` asked of a family without categorical splits falls back to that family's automatic choice."""
    if column.encoding in ("onehot", "target") or (column.encoding == "native" and family == NATIVE):
        return column.encoding
    listed = len(column.allowed) if column.allowed else None
    if family == NATIVE:
        return "native" if listed is not None and listed <= NATIVE_MAX else "target"
    return "onehot" if listed is not None and listed <= ONEHOT_MAX else "target"


def encodings(schema: SchemaConfig, family: str) -> dict[str, str]:
    """Every feature's treatment: numeric, datetime, ordinal, onehot, target or native."""
    return {c.name: encoding_for(c, family) if c.dtype == "category" else "numeric" if c.is_numeric else c.dtype
            for c in schema.features}


def build_preprocessor(schema: SchemaConfig, family: str, seed: int = 0) -> Any:
    """The ColumnTransformer turning the schema's features into the model's inputs, `native` columns first (their
    count is what `native_columns` gives the estimator as categorical_features)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

    chosen = encodings(schema, family)
    by_name = {c.name: c for c in schema.features}

    def as_numbers(*steps: Any) -> Any:
        """Steps ending in numbers: NaN kept for the native family, imputed otherwise, scaled for the linear one."""
        if family == NATIVE:
            return make_pipeline(*steps) if steps else "passthrough"
        tail = [SimpleImputer(strategy="median")] + ([StandardScaler()] if family == "elasticnet" else [])
        return make_pipeline(*steps, *tail)

    def named(kind: str) -> list[str]:
        return [name for name, how in chosen.items() if how == kind]

    # Every encoder of text, and each datetime step, reads one column: the ONNX converters join several text
    # columns with a FeatureVectorizer, which takes no text, and several datetimes as float32 seconds.
    folds = (StratifiedKFold if schema.task == "classification" else KFold)(TARGET_FOLDS, shuffle=True,
                                                                          random_state=seed)
    branches: list[tuple[str, Any, list[str]]] = []
    for name in named("native"):
        branches.append((f"native:{name}", OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
            max_categories=NATIVE_MAX), [name]))
    if numeric := named("numeric"):
        branches.append(("numeric", as_numbers(), numeric))
    for name in named("datetime"):
        column = by_name[name]
        branches.append((f"datetime:{name}", as_numbers(DatetimeFeatures(format=column.format,
                                                                         cyclical=column.cyclical)), [name]))
    for name in named("ordinal"):
        branches.append((f"ordinal:{name}", as_numbers(OrdinalEncoder(
            categories=[list(by_name[name].categories or ())], handle_unknown="use_encoded_value",
            unknown_value=np.nan, encoded_missing_value=np.nan)), [name]))
    for name in named("target"):
        # Regression says so: scikit-learn would take whole-numbered targets for class labels.
        kind = "continuous" if schema.task == "regression" else "auto"
        branches.append((f"target:{name}", as_numbers(TargetEncoder(target_type=kind, cv=folds)), [name]))
    for name in named("onehot"):
        column = by_name[name]
        grouping = column.min_frequency is not None or column.max_categories is not None
        # Values unseen in training: all zeros (or the infrequent column) instead of failing at serving time.
        encoder = OneHotEncoder(handle_unknown="infrequent_if_exist" if grouping else "ignore", sparse_output=True,
                                min_frequency=column.min_frequency, max_categories=column.max_categories)
        branches.append((f"onehot:{name}", make_pipeline(SimpleImputer(strategy="most_frequent"), encoder), [name]))
    return ColumnTransformer(branches, remainder="drop", verbose_feature_names_out=False,
                             sparse_threshold=0.0 if family == NATIVE else SPARSE_THRESHOLD)


def native_columns(schema: SchemaConfig, family: str) -> list[int]:
    """The positions of the natively categorical inputs (they come first), for the estimator's categorical_features."""
    return list(range(sum(how == "native" for how in encodings(schema, family).values())))


# --- the memory guard -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    family: str
    rows: int
    width: int  # the encoded matrix's columns
    sparse: bool
    bytes: int  # what the fit is expected to need at its peak
    widest: list[tuple[str, int]]  # (column, encoded columns), widest first

    def describe(self) -> str:
        return (f"{self.family} on {self.rows:,} rows x {self.width:,} encoded columns "
                f"({'sparse' if self.sparse else 'dense'}): about {_gib(self.bytes)} while fitting")


def estimate_memory(schema: SchemaConfig, family: str, frame: pd.DataFrame, classes: int = 2) -> MemoryEstimate:
    """The fit's peak memory, estimated from the encoded width of each feature of `frame` (its training rows)."""
    rows, chosen = len(frame), encodings(schema, family)
    by_name = {c.name: c for c in schema.features}
    widths: dict[str, int] = {}
    onehot_columns = 0
    for name, how in chosen.items():
        column = by_name[name]
        if how == "datetime":
            widths[name] = len(PARTS) + (2 * len(PERIODS) if column.cyclical else 0)
        elif how == "target":
            widths[name] = classes if schema.task == "classification" and classes > 2 else 1
        elif how == "onehot":
            seen = int(frame[name].nunique()) if name in frame else len(column.allowed or ())
            capped = min(seen, column.max_categories) if column.max_categories else seen
            widths[name] = max(capped, 1)
            onehot_columns += 1
        else:
            widths[name] = 1
    width = sum(widths.values())
    dense_width = width - sum(widths[n] for n, how in chosen.items() if how == "onehot")
    nonzero = dense_width + onehot_columns  # per row: every dense value, one 1 per one-hot column
    sparse = family != NATIVE and onehot_columns > 0 and nonzero < SPARSE_THRESHOLD * width
    matrix = rows * (dense_width * 8 + onehot_columns * 12 if sparse else width * 8)  # CSR: a double + an int32
    source = int(frame.memory_usage(deep=True).sum())
    widest = sorted(widths.items(), key=lambda item: -item[1])
    return MemoryEstimate(family, rows, width, sparse, source + FIT_COPIES * matrix, widest)


def available_memory() -> int:
    """What this process can still allocate: the machine's available memory, or less under a cgroup limit."""
    import psutil

    available = psutil.virtual_memory().available
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        text = limit.read_text().strip()
        if text != "max":
            available = min(available, int(text) - int(used.read_text()))
    except (OSError, ValueError):
        pass
    return available


def check_memory(schema: SchemaConfig, families: tuple[str, ...], frame: pd.DataFrame, schema_file: str,
                 available: int | None = None) -> list[MemoryEstimate]:
    """Refuse, before fitting, a fit of any of `families` on `frame` that would outgrow MEMORY_SHARE of the
    available memory: a ConfigError naming the columns that make the encoded matrix wide and how to fix them.
    MLOPS_MEMORY_LIMIT (bytes) replaces the measured available memory (to test, or to leave room for others)."""
    budget = int(os.environ.get("MLOPS_MEMORY_LIMIT") or available or available_memory())
    classes = int(frame[schema.target].nunique()) if schema.task == "classification" and schema.target in frame else 2
    estimates = [estimate_memory(schema, family, frame, classes) for family in families]
    refused = [e for e in estimates if e.bytes > MEMORY_SHARE * budget]
    if not refused:
        return estimates
    worst = max(refused, key=lambda e: e.bytes)
    chosen = encodings(schema, worst.family)
    wide = [(name, width) for name, width in worst.widest if width > 1][:5]
    named = ", ".join(f"{name} ({chosen[name]}, {width:,} columns)" for name, width in wide) or "none"
    key = f"columns.{wide[0][0]}.encoding" if wide else "columns"
    raise ConfigError(schema_file, key, (
        f"not enough memory to fit {worst.describe()}, over {MEMORY_SHARE:.0%} of the {_gib(budget)} available. "
        f"The widest encoded features: {named}. Fix: give high-cardinality categories encoding: target (or native "
        "with hist_gradient_boosting), cap one-hot columns with max_categories, give id-like or free-text columns "
        "role: id or role: ignore, or train on fewer rows"))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{math.ceil(n / 2**20):,} MiB"
