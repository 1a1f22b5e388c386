"""Seeded tables for the tests and benchmarks: three stand-ins for real tables, and data shaped by a schema.yaml.

The stand-ins are generated (numpy `default_rng`), not copied from any public data set. Each is shaped like a
table users really have, messiness included, with a target a default HistGradientBoosting model can learn:

- `flights` (336,776 rows by default; regression on `arr_delay`, in minutes): one year of departures from three
  airports. A row id (`flight_id`), a constant `year`, `month`, `day`, clock times as hhmm integers
  (`dep_time`, blank for cancelled flights, wrapping past midnight to 1..2400; `sched_dep_time`), `dep_delay`,
  a 16-value `carrier`, an id-like plate number `tailnum` (~4,000 values, blank for most cancelled flights),
  a 3-value `origin`, a skewed ~105-value `dest`, `air_time` (blank when cancelled or diverted), `distance`,
  `hour` (0-23) and `minute` (0-59) of the scheduled departure, `time_hour` (the scheduled hour as text,
  "YYYY-MM-DD HH:MM:SS", ~7,000 values) and the target `arr_delay`, blank for ~2.8 % of the rows (cancelled or
  diverted). Delays come from time of day, month, weekday, weather days and storm hours, carrier, origin and
  destination congestion, with heavy-tailed (log-normal) delays; arrival delay follows departure delay closely.
- `ordinal` (54,000 rows; regression on `rent`, a monthly rent): flat listings with three ordered categories
  whose alphabetical order is wrong: `quality` Basic < Standard < Comfort < Superior < Luxury, `energy` G < F <
  ... < A (A is best) and `size_class` S < M < L < XL; numeric features (`area_m2`, `rooms`, `build_year` with
  gaps, `floor`, `distance_km`), nominal ones (`district`, 24 values; `heating`; `balcony`), and a rent that is
  multiplicative in them (log-linear with noise).
- `survival` (1,309 rows; classification on `survived`, 0/1, ~38 % ones): passengers of a ship. A row id, a
  unique free-text `name` ("Surname, Title. Given names"), `pclass` 1/2/3, `sex`, `age` (~20 % blank, more in
  third class), `sibsp` / `parch` counts from generated travel groups, a high-cardinality `ticket` shared by a
  group, `fare` (per ticket, as on real manifests; one blank), a mostly blank `cabin` (several codes for some
  first-class groups) and an `embarked` port with a few blanks. Survival is a logistic model of sex, class, their
  interaction, childhood, group size and fare.

Everything structural (airport and carrier codes, distances, fleets, districts) is fixed across seeds, so a
table made with another seed holds the same kinds of values: the seed changes the sample (and the weather).

Data shaped by a schema.yaml (`schema` below) comes from bench/synthetic.py.

    .venv/bin/python -m bench.tables flights --out /tmp/flights.csv                 # 336,776 rows
    .venv/bin/python -m bench.tables flights --rows 1000000 --seed 7 --no-target --out /tmp/score.csv
    .venv/bin/python -m bench.tables schema --config-dir include/config --rows 10000 --out /tmp/wine.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.synthetic import write_csv, write_rows

# The seed of everything that is the same whatever the sample seed: codes, distances, fleets, districts, effects.
STRUCTURE_SEED = 21


@dataclass(frozen=True)
class StandIn:
    """A stand-in table: its generator, target, task and default size."""

    name: str
    generate: Callable[[int, int], pd.DataFrame]  # (rows, seed) -> frame
    target: str
    task: str
    rows: int
    seed: int
    stands_in_for: str


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _codes(rng: np.random.Generator, count: int, length: int, taken: set[str]) -> list[str]:
    """`count` distinct upper-case codes of `length` letters, none in `taken`, none a pandas NA spelling."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    found: list[str] = []
    seen = set(taken) | {"NAN", "NA", "NUL"}
    while len(found) < count:
        code = "".join(rng.choice(letters, length))
        if code not in seen:
            seen.add(code)
            found.append(code)
    return found


def _nullable_int(values: np.ndarray, missing: np.ndarray) -> Any:
    """Integers with blanks (pandas' Int64 array: written to CSV as empty fields, as most exports do)."""
    array = pd.array(np.asarray(values, dtype=np.int64), dtype="Int64")
    array[np.asarray(missing, dtype=bool)] = pd.NA
    return array


# --------------------------------------------------------------------------- flights

FLIGHT_YEAR = 2021
ORIGINS = ("IAD", "DCA", "BWI")
ORIGIN_SHARES = (0.37, 0.34, 0.29)
ORIGIN_DELAY = (3.0, -1.0, 0.5)  # minutes added to the departure delay propensity
CARRIERS = ("QX", "ZT", "K4", "RW", "JM", "PV", "T7", "GH", "XE", "LB", "WQ", "C3", "SY", "VN", "MK", "DY")
CARRIER_SHARES = (0.17, 0.16, 0.15, 0.12, 0.09, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02, 0.012, 0.008, 0.005, 0.003,
                  0.002)
CARRIER_DELAY = (2.0, -3.0, 7.0, 0.0, 4.0, -4.0, 9.0, 1.0, -2.0, 5.0, 3.0, -1.0, 6.0, -5.0, 10.0, 0.0)
DESTINATIONS = 105
PLANES = 4_050
HOUR_SHARES = np.array([0.002, 0.003, 0, 0, 0, 0.03, 0.08, 0.07, 0.08, 0.06, 0.05, 0.05, 0.05, 0.05, 0.06, 0.07,
                        0.065, 0.07, 0.06, 0.065, 0.045, 0.03, 0.01, 0.005])
# Delays build up over the day (late aircraft): minutes added by scheduled hour.
HOUR_DELAY = np.array([6, 6, 0, 0, 0, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 12, 11, 9, 7, 6], dtype=float)
MONTH_DELAY = np.array([3, 2, 0, 1, 1, 6, 7, 4, -3, -3, -2, 6], dtype=float)


@dataclass(frozen=True)
class _Network:
    """What stays the same in every sample: destinations, distances, congestion, fleets and plane speeds."""

    dest_codes: np.ndarray
    dest_shares: np.ndarray
    dest_distance: np.ndarray
    dest_congestion: np.ndarray
    origin_offset: np.ndarray
    tailnums: np.ndarray
    plane_carrier: np.ndarray
    plane_usage: np.ndarray
    plane_speed: np.ndarray


def _network() -> _Network:
    rng = np.random.default_rng(STRUCTURE_SEED)
    dest_codes = np.asarray(_codes(rng, DESTINATIONS, 3, set(ORIGINS)), dtype=object)
    rank = np.arange(DESTINATIONS)
    shares = 1.0 / (rank + 4.0) ** 1.35
    shares[-3:] = shares[-1] * np.array([0.3, 0.1, 0.03])  # a few destinations flown a handful of times a year
    shares /= shares.sum()
    distance = np.round(np.clip(rng.lognormal(np.log(750), 0.6, DESTINATIONS), 90, 2_600)).astype(np.int64)
    distance[rng.choice(DESTINATIONS, 2, replace=False)] = (4_830, 4_970)  # two long-haul islands
    congestion = np.round(rng.gamma(1.5, 2.5, DESTINATIONS) - 3.0, 1)
    carrier_of = rng.choice(len(CARRIERS), PLANES, p=np.asarray(CARRIER_SHARES) / sum(CARRIER_SHARES))
    carrier_of[: len(CARRIERS) * 12] = np.repeat(np.arange(len(CARRIERS)), 12)  # every carrier has a fleet
    plates: dict[str, None] = {}  # US-style registrations: N, 1-4 digits, 0-2 letters; distinct, in draw order
    while len(plates) < PLANES:
        letters = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ"), int(rng.choice([0, 1, 2], p=[0.2, 0.3, 0.5]))))
        plates.setdefault(f"N{rng.integers(1, 10 ** int(rng.choice([3, 4], p=[0.4, 0.6])))}{letters}")
    tailnums = np.asarray(list(plates), dtype=object)
    return _Network(dest_codes, shares, distance, congestion, np.array([0, -35, 28]), tailnums, carrier_of,
                    rng.lognormal(0.0, 0.5, PLANES), rng.normal(1.0, 0.025, PLANES))


def _pick_planes(rng: np.random.Generator, net: _Network, carrier: np.ndarray) -> np.ndarray:
    plane = np.empty(len(carrier), dtype=np.int64)
    for c in range(len(CARRIERS)):
        rows = np.flatnonzero(carrier == c)
        fleet = np.flatnonzero(net.plane_carrier == c)
        weights = net.plane_usage[fleet] / net.plane_usage[fleet].sum()
        plane[rows] = rng.choice(fleet, len(rows), p=weights)
    return plane


def _clock(minutes: np.ndarray) -> np.ndarray:
    """Minutes after midnight (any integer) as an hhmm clock reading 1..2400 (midnight is 2400, as airlines log)."""
    minutes = np.mod(minutes, 1440)
    hhmm = (minutes // 60) * 100 + minutes % 60
    return np.where(hhmm == 0, 2400, hhmm)


def flights(rows: int = 336_776, seed: int = 2113) -> pd.DataFrame:
    """One year of departures from three airports; the target `arr_delay` (minutes) is blank for ~2.8 % of rows."""
    net = _network()
    rng = np.random.default_rng(seed)
    days = pd.date_range(f"{FLIGHT_YEAR}-01-01", f"{FLIGHT_YEAR}-12-31", freq="D")
    day_weight = np.where(days.day_of_week == 5, 0.78, 1.0) * np.where(days.month.isin([6, 7, 8]), 1.06, 1.0)
    day = rng.choice(len(days), rows, p=day_weight / day_weight.sum())
    hour = rng.choice(24, rows, p=HOUR_SHARES / HOUR_SHARES.sum())
    round_minute = rng.random(rows) < 0.65
    minute = np.where(round_minute, rng.integers(0, 12, rows) * 5, rng.integers(0, 60, rows))
    origin = rng.choice(len(ORIGINS), rows, p=ORIGIN_SHARES)
    carrier = rng.choice(len(CARRIERS), rows, p=np.asarray(CARRIER_SHARES) / sum(CARRIER_SHARES))
    dest = rng.choice(DESTINATIONS, rows, p=net.dest_shares)
    plane = _pick_planes(rng, net, carrier)
    distance = np.maximum(net.dest_distance[dest] + net.origin_offset[origin], 80)

    # Weather: most days calm; storm days (more in summer afternoons and in winter) hit some hours hard.
    month_of_day = days.month.to_numpy()
    storm_chance = np.where(np.isin(month_of_day, [6, 7, 8]), 0.14, np.where(np.isin(month_of_day, [1, 2, 12]),
                                                                            0.10, 0.05))
    storm = rng.random(len(days)) < storm_chance
    severity = np.where(storm, rng.gamma(2.0, 18.0, len(days)), rng.exponential(1.5, len(days)))
    peak = np.where(np.isin(month_of_day, [6, 7, 8]), rng.normal(17, 2, len(days)), rng.uniform(6, 20, len(days)))
    hours = np.arange(24)
    by_hour = severity[:, None] * np.exp(-0.5 * ((hours[None, :] - peak[:, None]) / 3.5) ** 2)
    weather = (by_hour + rng.exponential(1.0, by_hour.shape))[day, hour]  # minutes of delay pressure
    weekday = days.day_of_week.to_numpy()[day]

    pressure = (HOUR_DELAY[hour] + MONTH_DELAY[month_of_day[day] - 1] + np.asarray(CARRIER_DELAY)[carrier]
                + np.asarray(ORIGIN_DELAY)[origin] + 0.9 * weather + np.where(np.isin(weekday, [3, 4]), 2.0, 0.0))
    cancelled = rng.random(rows) < _sigmoid(-4.05 + 0.045 * weather + 0.02 * HOUR_DELAY[hour])
    diverted = ~cancelled & (rng.random(rows) < 0.0022 + 0.0004 * np.minimum(weather, 60) / 10)

    late = rng.random(rows) < _sigmoid(-1.2 + pressure / 14.0)
    early = np.clip(np.round(rng.normal(-4.0, 3.5, rows)), -40, 15)
    lateness = np.exp(rng.normal(np.log(10.0 + np.maximum(pressure, 0.0)), 1.0, rows))
    dep_delay = np.where(late, np.minimum(np.round(lateness), 1_300), early).astype(np.int64)

    sched = hour * 60 + minute
    sched_block = 0.118 * distance + 17.0 + 18.0 + 0.012 * distance - 0.3 * np.asarray(CARRIER_DELAY)[carrier]
    expected_air = (0.118 * distance + 17.0) * net.plane_speed[plane]
    air = expected_air + rng.normal(0, 0.035, rows) * expected_air + 0.12 * weather
    taxi = (rng.gamma(2.0, 5.0, rows) - 10.0 + 0.35 * HOUR_DELAY[hour] + net.dest_congestion[dest]
            + 0.2 * weather + np.where(origin == 0, 2.0, 0.0))
    arrival = dep_delay - 0.04 * np.maximum(dep_delay, 0) + (air + 17.0 + taxi) - sched_block
    # Holding patterns and gate waits: a one-sided heavy tail, more of it in bad weather; early arrivals are bounded.
    holding = np.where(rng.random(rows) < 0.08 + 0.002 * np.minimum(weather, 60), rng.exponential(22.0, rows), 0.0)
    arr_delay = np.maximum(np.round(arrival + rng.normal(0, 9.0, rows) + holding), -95).astype(np.int64)

    blank_target = cancelled | diverted
    no_plate = (cancelled & (rng.random(rows) < 0.7)) | (rng.random(rows) < 0.001)
    hour_text = np.asarray([f"{d} {h:02d}:00:00" for d in days.strftime("%Y-%m-%d") for h in range(24)], dtype=object)
    frame = pd.DataFrame({
        "flight_id": np.zeros(rows, dtype=np.int64),
        "year": np.full(rows, FLIGHT_YEAR),
        "month": days.month.to_numpy()[day],
        "day": days.day.to_numpy()[day],
        "dep_time": _nullable_int(_clock(sched + dep_delay), cancelled),
        "sched_dep_time": hour * 100 + minute,
        "dep_delay": _nullable_int(dep_delay, cancelled),
        "carrier": np.asarray(CARRIERS, dtype=object)[carrier],
        "tailnum": np.where(no_plate, None, net.tailnums[plane]),
        "origin": np.asarray(ORIGINS, dtype=object)[origin],
        "dest": net.dest_codes[dest],
        "air_time": _nullable_int(np.round(air).astype(np.int64), blank_target),
        "distance": distance,
        "hour": hour,
        "minute": minute,
        "time_hour": hour_text[day * 24 + hour],
        "arr_delay": _nullable_int(arr_delay, blank_target),
    })
    frame = frame.iloc[np.lexsort((origin, sched, day))].reset_index(drop=True)  # by departure, as exports are
    frame["flight_id"] = np.arange(1, rows + 1)
    return frame


# --------------------------------------------------------------------------- ordered categories

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
    balcony = rng.random(rows) < _sigmoid(-0.6 + 0.7 * (era == 2) + 0.02 * (area - 68))

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
        "build_year": _nullable_int(build_year, rng.random(rows) < 0.04),
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


# --------------------------------------------------------------------------- survival

SURNAMES = (
    "Abbott Ainsley Allard Ashby Atwood Bainbridge Barlow Beckett Birch Blackwood Bramley Brennan Calloway Carver "
    "Chadwick Colby Conroy Crane Dalton Danvers Darcy Delaney Dunmore Eastwood Ellery Everett Fairfax Farrow Fenwick "
    "Finch Fletcher Galloway Garrick Gilmore Glover Goodwin Granger Hadley Halloran Harker Hastings Hawthorne Holloway "
    "Horne Ingram Jarvis Keaton Kendrick Kershaw Kingsley Lachlan Langley Larkin Lawson Linden Lockhart Lowell Lyle "
    "Maddox Marlowe Mercer Merriman Monroe Moreland Nash Norcross Oakley Ogden Paxton Pembroke Penrose Prescott "
    "Quill Radcliffe Ramsey Redding Rowe Sallow Sawyer Selwyn Shelby Sinclair Stafford Sterling Sutton Talbot "
    "Thorne Tilley Vance Vickers Wakefield Walsh Warwick Whitlock Winslow Wren Yardley Yates"
).split()
MALE_NAMES = ("Albert Alfred Arthur Bernard Cecil Charles Edgar Edmund Edward Ernest Frank Frederick George Harold "
              "Henry Herbert Hugh James John Joseph Leonard Lewis Martin Oliver Patrick Percy Ralph Robert Samuel "
              "Stanley Thomas Walter William").split()
FEMALE_NAMES = ("Ada Agnes Alice Amelia Annie Beatrice Bertha Clara Dora Edith Eleanor Elsie Emily Esther Ethel "
                "Florence Grace Harriet Hilda Ida Irene Jane Kate Lillian Lucy Mabel Margaret Mary Maud Nora Rose "
                "Ruth Sarah Violet Winifred").split()
PORTS = ("Dover", "Hull", "Leith")
GROUP_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 11)  # people travelling on one ticket
GROUP_SHARES = (0.74, 0.14, 0.06, 0.025, 0.012, 0.01, 0.006, 0.004, 0.003)
TICKET_PREFIXES = ("", "", "", "", "PX ", "A/4 ", "SOC ", "W/C ", "F.C. ", "SW/P ", "C.R. ")


def survival(rows: int = 1_309, seed: int = 1912) -> pd.DataFrame:
    """A ship's passenger list in travel groups; the target `survived` (0/1) is a logistic model with interactions."""
    return survival_with_probability(rows, seed)[0]


def survival_with_probability(rows: int = 1_309, seed: int = 1912) -> tuple[pd.DataFrame, np.ndarray]:
    """The survival table, and each passenger's true probability of `survived` = 1 (what a perfect model says)."""
    rng = np.random.default_rng(seed)
    people: list[dict[str, Any]] = []
    tickets: set[str] = set()
    while len(people) < rows:
        size = int(rng.choice(GROUP_SIZES, p=GROUP_SHARES))
        size = min(size, rows - len(people))
        people.extend(_group(rng, size, tickets))
    frame = pd.DataFrame(people)
    frame["name"] = _unique(frame["name"].tolist(), rng)
    frame = frame.sort_values(["pclass", "name"], kind="stable").reset_index(drop=True)  # as the manifest lists them
    frame.insert(0, "passenger_id", np.arange(1, rows + 1))

    age = frame.pop("true_age").to_numpy()
    female = (frame["sex"] == "female").to_numpy()
    pclass = frame["pclass"].to_numpy()
    size = (frame["sibsp"] + frame["parch"] + 1).to_numpy()
    child = age < 13
    logit = (-2.45 + np.select([pclass == 1, pclass == 2], [1.2, -0.4], 0.0)
             + female * (3.0 + np.select([pclass == 1, pclass == 2], [1.1, 1.4], -1.1))
             + child * np.where(female, 0.3, 2.2) - 0.025 * np.maximum(age - 40, 0)
             + np.select([size >= 5, size >= 2], [-1.8, 0.3], 0.0)
             + 0.1 * np.log1p(frame["fare"].to_numpy() / size) + 0.2 * frame["cabin"].notna().to_numpy())
    frame["survived"] = (rng.random(rows) < _sigmoid(logit)).astype(np.int64)

    blank_age = rng.random(rows) < np.select([pclass == 1, pclass == 2], [0.12, 0.07], 0.28)
    frame["age"] = np.where(blank_age, np.nan, age)
    frame.loc[rng.choice(rows, 1), "fare"] = np.nan
    frame.loc[rng.choice(rows, min(2, rows), replace=False), "embarked"] = None
    columns = ["passenger_id", "pclass", "name", "sex", "age", "sibsp", "parch", "ticket", "fare", "cabin", "embarked",
               "survived"]
    return frame[columns], _sigmoid(logit)


def _group(rng: np.random.Generator, size: int, tickets: set[str]) -> list[dict[str, Any]]:
    """One travel group: a shared surname, class, ticket, fare, port and (in first class, mostly) cabin."""
    pclass = int(rng.choice([1, 2, 3], p=[0.25, 0.21, 0.54] if size < 5 else [0.08, 0.12, 0.80]))
    surname = str(rng.choice(SURNAMES))
    while True:
        prefix = str(rng.choice(TICKET_PREFIXES))
        ticket = f"{prefix}{rng.integers(1_000, 400_000) if prefix or rng.random() < 0.5 else rng.integers(100, 999)}"
        if ticket not in tickets:
            tickets.add(ticket)
            break
    base = {1: rng.lognormal(np.log(55), 0.6), 2: rng.lognormal(np.log(16), 0.35), 3: rng.lognormal(np.log(8), 0.3)}
    fare = round(float(base[pclass]) * (1 + 0.8 * (size - 1)), 4) if rng.random() > 0.012 else 0.0
    cabin_chance = {1: 0.82, 2: 0.09, 3: 0.03}[pclass]
    cabin = None
    if rng.random() < cabin_chance:
        deck = str(rng.choice({1: list("ABCDE"), 2: list("DEF"), 3: list("EFG")}[pclass]))
        first = int(rng.integers(2, 130))
        count = 1 if size < 3 or pclass != 1 else int(rng.integers(1, 4))
        cabin = " ".join(f"{deck}{first + 2 * i}" for i in range(count))
    port = str(rng.choice(PORTS, p=[0.70, 0.20, 0.10] if pclass != 1 else [0.55, 0.42, 0.03]))
    adults = 1 if size == 1 else (2 if rng.random() < 0.75 else 1)
    children = size - adults
    members = []
    for i in range(size):
        child = i >= adults
        if child:
            age = float(rng.choice([rng.integers(1, 11) / 12, rng.uniform(1, 17)], p=[0.1, 0.9]))
            age = round(age, 2) if age < 1 else float(np.floor(age)) + (0.5 if rng.random() < 0.05 else 0.0)
            male = rng.random() < 0.5
        else:
            mean = {1: 40.0, 2: 31.0, 3: 26.0}[pclass]
            age = float(np.clip(np.round(rng.normal(mean, 12.0)), 17, 80))
            male = (i == 0) if adults == 2 else rng.random() < 0.72
        if child:
            title = "Master" if male and age < 13 else ("Mr" if male else "Miss")
        elif male:
            title = str(rng.choice(["Mr", "Dr", "Rev", "Col"], p=[0.97, 0.015, 0.01, 0.005]))
        else:
            title = "Mrs" if adults == 2 or rng.random() < 0.4 else "Miss"
        given = " ".join(rng.choice(MALE_NAMES if male else FEMALE_NAMES, 1 + int(rng.random() < 0.4), replace=False))
        couple = adults == 2 and not child
        members.append({
            "pclass": pclass, "name": f"{surname}, {title}. {given}", "sex": "male" if male else "female",
            "true_age": age, "sibsp": (children - 1 if child else int(couple)) + (1 if rng.random() < 0.03 else 0),
            "parch": (adults if child else children), "ticket": ticket, "fare": fare, "cabin": cabin,
            "embarked": port,
        })
    return members


def _unique(names: list[str], rng: np.random.Generator) -> list[str]:
    """Names made unique the way passenger lists tell namesakes apart: a middle initial, then a number."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate = name
        while candidate in seen:
            candidate = f"{name} {rng.choice(list('ABCDEFGHJKLMNPRSTW'))}."
            if candidate in seen:
                candidate = f"{name} ({len(seen)})"
        seen.add(candidate)
        out.append(candidate)
    return out


STAND_INS: dict[str, StandIn] = {
    "flights": StandIn("flights", flights, "arr_delay", "regression", 336_776, 2113,
                       "a 300k+ row flights table with ids, timestamps, high-cardinality strings and missing values"),
    "ordinal": StandIn("ordinal", ordinal, "rent", "regression", 54_000, 5394,
                       "a 50k-row table with ordered categories"),
    "survival": StandIn("survival", survival, "survived", "classification", 1_309, 1912,
                        "a small survival-style classification table"),
}


def write_stand_in(name: str, rows: int, seed: int, path: Path, target: bool = True) -> None:
    """Generate a stand-in and write it as CSV (without the target column when `target` is false)."""
    table = STAND_INS[name]
    frame = table.generate(rows, seed)
    write_csv(frame if target else frame.drop(columns=table.target), path)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=[*STAND_INS, "schema"],
                        help="a stand-in, or `schema` (needs --config-dir; bench/synthetic.py)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    parser.add_argument("--rows", type=int, help="default: the stand-in's own size (schema: 10000)")
    parser.add_argument("--seed", type=int, help="numpy default_rng seed (default: the stand-in's own)")
    parser.add_argument("--no-target", action="store_true", help="leave the target column out (a file to score)")
    parser.add_argument("--config-dir", type=Path, help="with `schema`: the config dir whose schema.yaml to follow")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.table == "schema":
        if args.config_dir is None:
            parser.error("schema needs --config-dir")
        write_rows(args.config_dir, args.rows or 10_000, 20240601 if args.seed is None else args.seed, args.out,
                   target=not args.no_target)
    else:
        table = STAND_INS[args.table]
        write_stand_in(args.table, args.rows or table.rows, table.seed if args.seed is None else args.seed, args.out,
                       target=not args.no_target)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
