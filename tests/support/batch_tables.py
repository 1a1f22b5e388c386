"""A flights-like table for batch prediction's tests: every role (two id columns, an ignore column, the target) and
every feature type (a datetime in its own format, an ordinal, an open category, a listed one, numbers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from include.ml.schema_file import SchemaConfig

CARRIERS = ("A", "B", "C", "D", "E", "F", "G", "H")
CUTS = ("Fair", "Good", "Very Good")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FLIGHTS_SCHEMA: dict[str, Any] = {
    "task": "regression",
    "target": "arr_delay",
    "min_rows": 100,
    "columns": {
        "flight_id": {"dtype": "int", "role": "id"},
        "leg": {"dtype": "string", "role": "id", "nullable": True},
        "tailnum": {"dtype": "category", "nullable": True, "encoding": "target"},  # open: ~300 plates
        "time_hour": {"dtype": "datetime", "format": TIME_FORMAT, "min": "2013-01-01", "max": "2014-12-31"},
        "dest": {"dtype": "category"},  # open, no encoding given: chosen by the family
        "carrier": {"dtype": "category", "allowed": list(CARRIERS)},
        "dep_delay": {"dtype": "float", "min": -30, "max": 600},
        "cut": {"dtype": "ordinal", "categories": list(CUTS)},
        "note": {"dtype": "string", "role": "ignore", "nullable": True},
        "arr_delay": {"dtype": "float"},
    },
}
FLIGHTS = SchemaConfig.model_validate(FLIGHTS_SCHEMA)
FEATURES = [c.name for c in FLIGHTS.features]


def flights_like(rows: int, seed: int = 0, missing_plates: float = 0.02) -> pd.DataFrame:
    """`rows` flights whose delay depends on every feature (the hour of the datetime, the cut's order, the carrier,
    the destination, the plate), with missing plates (this share) and notes; the target column included."""
    rng = np.random.default_rng(seed)
    moments = pd.Timestamp("2013-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24, rows), unit="h")
    dest_index = rng.integers(0, 40, rows)
    dest = np.array([f"D{i:02d}" for i in dest_index], dtype=object)
    tailnum = np.array([f"N{i:03d}" for i in rng.integers(0, 300, rows)], dtype=object)
    tailnum[rng.random(rows) < missing_plates] = None
    carrier = rng.choice(CARRIERS, rows)
    cut = rng.choice(CUTS, rows)
    dep_delay = (rng.gamma(1.0, 15, rows) - 5).round()
    order = np.array([CUTS.index(c) for c in cut])
    arr_delay = (dep_delay + 20 * (moments.hour.to_numpy() > 17) + 8 * (carrier == "A") + 5 * order
                 + dest_index % 4 + rng.normal(0, 5, rows)).round(1)
    note = np.array([f"free text {i}" for i in range(rows)], dtype=object)
    note[::5] = None
    return pd.DataFrame({"flight_id": np.arange(rows), "leg": [f"L{i % 3}" for i in range(rows)],
                         "tailnum": tailnum, "time_hour": moments.strftime(TIME_FORMAT), "dest": dest,
                         "carrier": carrier, "dep_delay": dep_delay, "cut": cut, "note": note,
                         "arr_delay": arr_delay})
