"""The `ordinal` stand-in of bench/tables.py: flat listings with ordered categories whose alphabetical order is
wrong; the target `rent`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.stand_in_common import STRUCTURE_SEED, nullable_int, sigmoid

QUALITY = ("Basic", "Standard", "Comfort", "Superior", "Luxury")
ENERGY = ("G", "F", "E", "D", "C", "B", "A")  # worst to best: alphabetical order is the reverse
SIZE_CLASS = ("S", "M", "L", "XL")
HEATING = ("gas", "district", "heat pump", "electric")
DISTRICTS = 24


def ordinal(rows: int = 54_000, seed: int = 5394) -> pd.DataFrame:
    """Flat listings with ordered categories; the target `rent` is multiplicative in the features."""
    structure = np.random.default_rng(STRUCTURE_SEED + 1)
    district_names = np.asarray([f"{name}" for name in _district_names(structure)], dtype=object)
    district_premium = structure.normal(0.0, 0.18, DISTRICTS)
    district_distance = np.sort(structure.uniform(0.5, 18.0, DISTRICTS))
    district_premium = district_premium - 0.025 * district_distance  # the centre costs more
    district_shares = structure.dirichlet(np.full(DISTRICTS, 3.0))

    rng = np.random.default_rng(seed)
    district = rng.choice(DISTRICTS, rows, p=district_shares)
    distance = np.round(np.clip(district_distance[district] + rng.normal(0, 1.2, rows), 0.1, 25.0), 1)
    area = np.round(np.clip(rng.lognormal(np.log(68.0), 0.42, rows), 16.0, 420.0), 1)
    rooms = np.clip(np.round(area / 26.0 + rng.normal(0.4, 0.6, rows)), 1, 9).astype(np.int64)
    size_cut = np.array([45.0, 75.0, 110.0])
    size_class = np.searchsorted(size_cut, area * rng.lognormal(0.0, 0.06, rows))  # agents round differently
    era = rng.choice(3, rows, p=[0.35, 0.40, 0.25])
    build_year = np.where(era == 0, rng.integers(1880, 1946, rows),
                          np.where(era == 1, rng.integers(1946, 1995, rows), rng.integers(1995, 2024, rows)))
    quality_score = (0.9 * (district_premium[district] / 0.18) + 0.8 * (build_year > 2005) - 0.3 * (era == 1)
                     + rng.normal(0, 1.0, rows))
    quality = np.searchsorted(np.quantile(quality_score, [0.08, 0.30, 0.65, 0.90]), quality_score)
    energy_score = (build_year - 1960) / 25.0 + 0.4 * (quality - 2) + rng.normal(0, 0.9, rows)
    energy = np.searchsorted(np.quantile(energy_score, [0.06, 0.16, 0.32, 0.55, 0.75, 0.90]), energy_score)
    floor = np.minimum(rng.geometric(0.28, rows) - 1, 30)
    heating = rng.choice(len(HEATING), rows, p=[0.42, 0.33, 0.15, 0.10])
    balcony = rng.random(rows) < sigmoid(-0.6 + 0.7 * (era == 2) + 0.02 * (area - 68))

    age = 2024 - build_year
    age_effect = np.where(age < 10, 0.10, 0.0) - 0.0025 * np.minimum(age, 80) + np.where(age > 100, 0.06, 0.0)
    log_rent = (2.55 + 0.92 * np.log(area) + 0.045 * rooms + 0.115 * quality + 0.035 * energy
                + district_premium[district] - 0.012 * distance + age_effect
                + 0.025 * np.minimum(floor, 6) + 0.04 * balcony + np.array([0.0, 0.02, 0.05, -0.04])[heating]
                + 0.06 * quality * (area > 110) + rng.normal(0, 0.11, rows))
    rent = np.round(np.exp(log_rent), -1).astype(np.int64)
    return pd.DataFrame({
        "area_m2": area,
        "rooms": rooms,
        "size_class": np.asarray(SIZE_CLASS, dtype=object)[size_class],
        "quality": np.asarray(QUALITY, dtype=object)[quality],
        "energy": np.asarray(ENERGY, dtype=object)[energy],
        "build_year": nullable_int(build_year, rng.random(rows) < 0.04),
        "floor": floor,
        "district": district_names[district],
        "distance_km": distance,
        "heating": np.asarray(HEATING, dtype=object)[heating],
        "balcony": np.where(balcony, "yes", "no").astype(object),
        "rent": rent,
    })


def _district_names(rng: np.random.Generator) -> list[str]:
    first = ["North", "South", "East", "West", "Old", "New", "Upper", "Lower"]
    second = ["Harbour", "Mill", "Park", "Bridge", "Market", "Hill", "Green", "Gate", "Field", "Wharf", "Cross",
              "Brook"]
    names = [f"{a} {b}" for a in first for b in second]
    return list(rng.choice(names, DISTRICTS, replace=False))
