"""The `survival` stand-in of bench/tables.py: a ship's passengers in travel groups; the target `survived`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.stand_in_common import sigmoid

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
    frame["survived"] = (rng.random(rows) < sigmoid(logit)).astype(np.int64)

    blank_age = rng.random(rows) < np.select([pclass == 1, pclass == 2], [0.12, 0.07], 0.28)
    frame["age"] = np.where(blank_age, np.nan, age)
    frame.loc[rng.choice(rows, 1), "fare"] = np.nan
    frame.loc[rng.choice(rows, min(2, rows), replace=False), "embarked"] = None
    columns = ["passenger_id", "pclass", "name", "sex", "age", "sibsp", "parch", "ticket", "fare", "cabin", "embarked",
               "survived"]
    return frame[columns], sigmoid(logit)


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
