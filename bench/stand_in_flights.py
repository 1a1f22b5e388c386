"""The `flights` stand-in of bench/tables.py: one year of departures from three airports (its docstring says
what each column holds); the target `arr_delay`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.stand_in_common import STRUCTURE_SEED, nullable_int, sigmoid

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
    cancelled = rng.random(rows) < sigmoid(-4.05 + 0.045 * weather + 0.02 * HOUR_DELAY[hour])
    diverted = ~cancelled & (rng.random(rows) < 0.0022 + 0.0004 * np.minimum(weather, 60) / 10)

    late = rng.random(rows) < sigmoid(-1.2 + pressure / 14.0)
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
        "dep_time": nullable_int(_clock(sched + dep_delay), cancelled),
        "sched_dep_time": hour * 100 + minute,
        "dep_delay": nullable_int(dep_delay, cancelled),
        "carrier": np.asarray(CARRIERS, dtype=object)[carrier],
        "tailnum": np.where(no_plate, None, net.tailnums[plane]),
        "origin": np.asarray(ORIGINS, dtype=object)[origin],
        "dest": net.dest_codes[dest],
        "air_time": nullable_int(np.round(air).astype(np.int64), blank_target),
        "distance": distance,
        "hour": hour,
        "minute": minute,
        "time_hour": hour_text[day * 24 + hour],
        "arr_delay": nullable_int(arr_delay, blank_target),
    })
    frame = frame.iloc[np.lexsort((origin, sched, day))].reset_index(drop=True)  # by departure, as exports are
    frame["flight_id"] = np.arange(1, rows + 1)
    return frame
