"""A table with every column type and role of schema.yaml (flights-like), the models the pipeline trains on it, and
those models as bundles: what the serving and monitoring tests round-trip.

Columns: an id (`flight_id`), a number, a datetime in its own format and one in unix seconds (cyclical, nullable),
an ordinal, a category with allowed values, an open category (target-encoded), an open category one-hot encoded with
an infrequent bucket, and a free-text column the model ignores. The frame is what pandas reads from such a CSV:
datetimes as text (the unix one as numbers, float where missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml.schema_file import ColumnSpec, SchemaConfig
from serving.contract import Contract
from tests.support.bundles import install_bundle
from tests.support.frames import pipeline_for

ID = "flight_id"
IGNORED = "note"
CUTS = ("Fair", "Good", "Very Good")
CARRIERS = ("AA", "B6", "DL", "UA")
DESTS = tuple(f"D{i:02d}" for i in range(40))
TAILS = tuple(f"N{i:03d}" for i in range(60))
COLUMNS = (
    ColumnSpec(name=ID, dtype="int", role="id"),
    ColumnSpec(name="dep_delay", dtype="float", min=-30, max=400),
    ColumnSpec(name="time_hour", dtype="datetime", format="%Y-%m-%d %H:%M:%S", min="2013-01-01",
               max="2013-12-31T23:00:00"),
    ColumnSpec(name="sched", dtype="datetime", format="unix", cyclical=True, nullable=True),
    ColumnSpec(name="cut", dtype="ordinal", categories=CUTS),
    ColumnSpec(name="carrier", dtype="category", allowed=CARRIERS, nullable=True),
    ColumnSpec(name="dest", dtype="category", nullable=True, encoding="target"),
    ColumnSpec(name="tailnum", dtype="category", nullable=True, encoding="onehot", min_frequency=8),
    ColumnSpec(name=IGNORED, dtype="string", role="ignore"),
)
TARGETS = {"regression": ColumnSpec(name="arr_delay", dtype="float"),
           "classification": ColumnSpec(name="late", dtype="category", allowed=("early", "on time", "late"))}
FEATURES = ("dep_delay", "time_hour", "sched", "cut", "carrier", "dest", "tailnum")


def schema(task: str) -> SchemaConfig:
    return SchemaConfig(task=task, target=TARGETS[task].name, min_rows=1, columns=COLUMNS + (TARGETS[task],))


def contract(task: str) -> Contract:
    return Contract.from_mlmodel({"metadata": {"feature_contract": schema(task).feature_contract()}})


def frame(task: str, rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Rows as pandas reads them from the table's CSV, the target included."""
    rng = np.random.default_rng(seed)
    hours = rng.integers(0, 364 * 24, rows)
    moments = pd.Timestamp("2013-01-01") + pd.to_timedelta(hours, unit="h")
    sched = (moments - pd.to_timedelta(rng.integers(0, 90, rows), unit="min")).astype("datetime64[s]")
    sched_seconds = sched.astype("int64").to_numpy(dtype=float, copy=True)
    sched_seconds[rng.random(rows) < 0.1] = np.nan
    dep = np.round(rng.gamma(1.0, 15, rows) - 5, 1)
    cut = rng.choice(CUTS, rows)
    carrier = rng.choice(CARRIERS, rows).astype(object)
    carrier[rng.random(rows) < 0.05] = None
    dest = rng.choice(DESTS, rows).astype(object)
    dest[rng.random(rows) < 0.05] = None
    tail = rng.choice(TAILS, rows, p=np.r_[np.full(10, 0.07), np.full(50, 0.3 / 50)]).astype(object)
    tail[rng.random(rows) < 0.05] = None
    signal = (dep + 15 * (moments.hour.to_numpy() > 17) + 5 * np.searchsorted(CUTS, cut, sorter=np.argsort(CUTS))
              + 8 * (carrier == "UA") + np.array([int(d[1:]) % 7 if d else 0 for d in dest]))
    target: Any = signal + rng.normal(0, 3, rows)
    if task == "classification":
        target = np.select([target < 5, target < 25], ["early", "on time"], "late")
    return pd.DataFrame({ID: np.arange(1000, 1000 + rows), "dep_delay": dep,
                         "time_hour": moments.strftime("%Y-%m-%d %H:%M:%S"), "sched": sched_seconds, "cut": cut,
                         "carrier": carrier, "dest": dest, "tailnum": tail,
                         IGNORED: [f"free text {i}" for i in range(rows)], TARGETS[task].name: target})


def fitted(task: str, family: str, hyperparameters: dict[str, Any] | None = None) -> tuple[Any, pd.DataFrame]:
    """The pipeline training fits for `family` on the table, and its training features (as training sees them)."""
    data = frame(task)
    x, y = data[list(FEATURES)], data[TARGETS[task].name]
    small = {"random_forest": {"n_estimators": 10}, "extra_trees": {"n_estimators": 10},
             "hist_gradient_boosting": {"max_iter": 20}}.get(family, {})
    pipeline = pipeline_for(schema(task), family, {**small, **(hyperparameters or {})})
    pipeline.fit(x, y)
    return pipeline, x


def make_typed_bundle(store: Path, version: str, task: str = "regression",
                      family: str = "hist_gradient_boosting", name: str = "flights") -> Path:
    from include.ml.components.training import skops_trusted_types

    pipeline, x = fitted(task, family)
    return install_bundle(store, version, pipeline, x, schema(task), skops_trusted_types(pipeline, family), name)


def requests(task: str, rows: int, seed: int) -> pd.DataFrame:
    """Rows of the table other than the training ones, id and ignored column included, the target left out."""
    return frame(task, rows, seed).drop(columns=TARGETS[task].name)


def as_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON records as a client sends them: missing values as null, numbers as numbers (the unix ones whole)."""
    out = []
    for record in rows.to_dict("records"):
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        if row.get("sched") is not None:
            row["sched"] = int(row["sched"])
        out.append(row)
    return out
