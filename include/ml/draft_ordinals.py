"""Ordinal columns as `python main.py init` drafts them: text values forming a known ordered scale (SCALES, letter
grades, values carrying a number), listed lowest first.
"""

from __future__ import annotations

import re

# Known ordered scales, lowest first; a level may have synonyms.
SCALES: dict[str, list[tuple[str, ...]]] = {
    "sizes": [("xxxs",), ("xxs",), ("xs", "extra small"), ("s", "small"), ("m", "medium"), ("l", "large"),
              ("xl", "extra large"), ("xxl",), ("xxxl",)],
    "sizes in words": [("tiny",), ("small",), ("medium",), ("large",), ("huge",)],
    "quality words": [("very poor", "very bad", "awful", "terrible"), ("poor", "bad"), ("fair", "mediocre"),
                      ("average", "ok", "okay", "satisfactory", "acceptable"), ("good",), ("very good", "great"),
                      ("excellent",), ("premium",), ("ideal", "perfect")],
    "quality codes": [("po",), ("fa",), ("ta",), ("gd",), ("ex",)],
    "tiers": [("basic", "budget", "economy"), ("standard", "regular"), ("comfort", "plus"), ("superior",),
              ("luxury", "deluxe")],
    "medals": [("bronze",), ("silver",), ("gold",), ("platinum",), ("diamond",)],
    "skill levels": [("beginner", "novice"), ("intermediate",), ("advanced",), ("expert",)],
    "low to high": [("very low",), ("low",), ("medium", "moderate", "mid", "normal"), ("high",),
                    ("very high",)],
    "agreement": [("strongly disagree",), ("disagree",), ("somewhat disagree", "slightly disagree"),
                  ("neutral", "neither agree nor disagree"), ("somewhat agree", "slightly agree"), ("agree",),
                  ("strongly agree",)],
    "satisfaction": [("very dissatisfied",), ("dissatisfied",), ("neutral",), ("satisfied",),
                     ("very satisfied",)],
    "frequency": [("never",), ("rarely", "seldom"), ("sometimes", "occasionally"), ("often", "frequently"),
                  ("usually", "mostly"), ("always",)],
    "clarity grades": [("i3",), ("i2",), ("i1",), ("si2",), ("si1",), ("vs2",), ("vs1",), ("vvs2",), ("vvs1",),
                       ("if",), ("fl",)],
}
_NUMBER = re.compile(r"(?<![A-Za-z\d.,])(-?)(\d+(?:[.,]\d+)*)")
_BELOW = re.compile(r"^\s*(<|≤|<=|under\b|less than\b|below\b|up to\b)", re.IGNORECASE)
_ABOVE = re.compile(r"(^\s*(>|≥|>=|over\b|more than\b|above\b))|(\+|\bor more\b|\band (over|above|more)\b)",
                    re.IGNORECASE)
_GRADE = re.compile(r"^([A-Z])([+-]?)$")


def _normal(value: str) -> str:
    return " ".join(re.sub(r"[_-]+", " ", value.strip().lower()).split())


def ordinal_scale(values: list[str]) -> tuple[list[str], str] | None:
    """(values lowest first, the scale's name) when the values form a known ordered scale."""
    if len(values) < 3:
        return None
    normal = {v: _normal(v) for v in values}
    for scale, levels in SCALES.items():
        rank = {word: i for i, level in enumerate(levels) for word in level}
        if all(n in rank for n in normal.values()) and len({rank[n] for n in normal.values()}) == len(values):
            return sorted(values, key=lambda v: rank[normal[v]]), scale
    grades = [_GRADE.match(v.strip()) for v in values]
    if all(grades):
        letters = sorted({m.group(1) for m in grades if m})
        span = ord(letters[-1]) - ord(letters[0]) + 1
        school = set(letters) <= set("ABCDF") and "F" in letters and "E" not in letters
        if (len(letters) == span or school) and span <= 10 and len({v.strip() for v in values}) == len(values):
            sign = {"-": 0, "": 1, "+": 2}  # A is the best grade: lowest first is the last letter first, B- < B < B+
            return sorted(values, key=lambda v: (-ord(v.strip()[0]), sign[v.strip()[1:]])), "letter grades, A best"
    keys = [_number_key(v) for v in values]
    if all(k is not None for k in keys) and len(set(keys)) == len(values):
        return [v for _, v in sorted(zip(keys, values))], "values ordered by their number"  # type: ignore[type-var]
    return None


def _number_key(value: str) -> tuple[float, int] | None:
    """The first number of `value` not glued to a letter, and -1 / 0 / +1 for below / at / above it."""
    match = _NUMBER.search(value)
    if match is None:
        return None
    digits = match.group(2)
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", digits):
        digits = digits.replace(",", "")
    try:
        number = float(match.group(1) + digits.replace(",", "."))
    except ValueError:
        return None
    side = -1 if _BELOW.search(value) else 1 if _ABOVE.search(value) else 0
    return number, side
