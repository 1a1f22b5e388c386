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
from typing import Callable

import pandas as pd

from bench.stand_in_flights import flights
from bench.stand_in_ordinal import ordinal
from bench.stand_in_survival import survival
from bench.synthetic import write_csv, write_rows


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
