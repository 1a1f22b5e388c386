"""Drift statistics on data the tests make: no false alarms between random halves, the shifted features found."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include.ml.params_file import DriftThresholds, MonitoringPolicy
from include.ml.schema_file import ColumnSpec
from include.monitoring.drift import DRIFTED, NOT_ENOUGH_DATA, NOT_TESTED, compare, compare_one

KINDS = {"normal": "numeric", "skewed": "numeric", "uniform": "numeric", "count": "numeric",
         "colour": "categorical", "size": "categorical"}
DEFAULTS = MonitoringPolicy()


def population(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "normal": rng.normal(10, 2, rows), "skewed": rng.lognormal(0, 1, rows), "uniform": rng.uniform(0, 1, rows),
        "count": rng.poisson(3, rows).astype(float),
        "colour": rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2]),
        "size": rng.choice(["S", "M", "L", "XL"], rows, p=[0.25, 0.25, 0.25, 0.25])})


def halves(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    shuffled = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    return shuffled.iloc[: len(frame) // 2], shuffled.iloc[len(frame) // 2:]


def test_random_halves_of_the_same_data_raise_at_most_two_false_alarms_in_fifty_trials() -> None:
    alarms = []
    for seed in range(50):
        reference, current = halves(population(2000, seed), seed)
        drifted = compare(reference, current, KINDS, DEFAULTS).drifted
        if drifted:
            alarms.append((seed, drifted))
    assert len(alarms) <= 2, alarms


def test_a_one_sd_mean_shift_in_one_numeric_feature_is_flagged_and_only_it() -> None:
    reference, current = halves(population(2000, 1), 1)
    current = current.assign(normal=current["normal"] + 2.0)  # sd 2
    report = compare(reference, current, KINDS, DEFAULTS)
    assert report.drifted == ["normal"]
    shifted = report.features["normal"]
    assert shifted.p_adjusted < 0.05 and shifted.distance > 0.1 and shifted.test == "ks"


def test_a_changed_category_mix_is_flagged_and_only_that_feature() -> None:
    reference, _ = halves(population(2000, 2), 2)
    current = population(1000, 3)
    current["colour"] = np.random.default_rng(4).choice(["red", "green", "blue"], len(current), p=[0.2, 0.3, 0.5])
    report = compare(reference, current, KINDS, DEFAULTS)
    assert report.drifted == ["colour"]
    assert report.features["colour"].test == "chi2" and report.features["colour"].distance > 0.1


def test_too_few_rows_is_not_enough_data_never_drift() -> None:
    reference = population(1000, 5)
    current = population(40, 6).assign(normal=lambda f: f["normal"] + 100)  # far off, but only 40 rows
    report = compare(reference, current, KINDS, MonitoringPolicy(min_rows=50))
    assert report.drifted == [] and report.not_enough_data
    assert {f.status for f in report.features.values()} == {NOT_ENOUGH_DATA}
    assert "not enough data" in report.features["normal"].describe()


def test_a_feature_with_mostly_missing_values_is_not_enough_data_and_reports_the_missing_rate() -> None:
    reference, current = halves(population(2000, 7), 7)
    current = current.assign(uniform=np.where(np.arange(len(current)) < 950, np.nan, current["uniform"]))
    feature = compare(reference, current, KINDS, DEFAULTS).features["uniform"]
    assert feature.status == NOT_ENOUGH_DATA and feature.missing_current == pytest.approx(0.95)


def test_a_small_shift_with_a_tiny_effect_size_is_not_drift_however_significant() -> None:
    reference, current = population(50_000, 8), population(50_000, 9)
    current = current.assign(normal=current["normal"] + 0.1)  # 0.05 sd: significant at this size, but trivial
    feature = compare(reference, current, KINDS, DEFAULTS).features["normal"]
    assert feature.p_adjusted < 0.05 and feature.distance < 0.1 and feature.status == "ok"


def test_per_feature_thresholds_override_the_global_ones() -> None:
    reference, current = halves(population(2000, 10), 10)
    current = current.assign(normal=current["normal"] + 2.0)
    loose = MonitoringPolicy(features={"normal": DriftThresholds(psi=50.0)})
    assert compare(reference, current, KINDS, loose).drifted == []


def test_benjamini_hochberg_finds_the_shift_too() -> None:
    reference, current = halves(population(2000, 11), 11)
    current = current.assign(skewed=current["skewed"] * 3)
    assert compare(reference, current, KINDS, MonitoringPolicy(correction="benjamini_hochberg")).drifted == ["skewed"]


def test_out_of_range_rates_follow_the_schema() -> None:
    reference, current = halves(population(400, 12), 12)
    current = current.assign(uniform=np.r_[np.full(50, 2.0), current["uniform"].to_numpy()[50:]],
                             size=np.r_[["XXL"] * 20, current["size"].to_numpy()[20:]])
    specs = {"uniform": ColumnSpec(name="uniform", dtype="float", min=0, max=1),
             "size": ColumnSpec(name="size", dtype="category", allowed=("S", "M", "L", "XL"))}
    report = compare(reference, current, KINDS, DEFAULTS, specs)
    assert report.features["uniform"].out_of_range == pytest.approx(50 / 200)
    assert report.features["size"].out_of_range == pytest.approx(20 / 200)
    assert report.features["normal"].out_of_range is None


def test_prediction_drift_alone_uses_the_global_thresholds() -> None:
    rng = np.random.default_rng(13)
    assert compare_one("prediction", pd.Series(rng.normal(5, 1, 500)), pd.Series(rng.normal(6, 1, 500)),
                       "numeric", DEFAULTS).status == DRIFTED
    assert compare_one("prediction", pd.Series(rng.normal(5, 1, 500)), pd.Series(rng.normal(5, 1, 500)),
                       "numeric", DEFAULTS).status == "ok"


# --- datetimes and ordinals ---------------------------------------------------------------------------------------

def traffic(start: str, hours: int, seed: int, evening: float = 0.3) -> pd.DataFrame:
    """One row per flight, hourly departures over `hours` hours from `start`, `evening` of them after 17:00, as text
    in the schema's format; a grade of three ordered values."""
    rng = np.random.default_rng(seed)
    base = pd.Timestamp(start)
    days = rng.integers(0, max(hours // 24, 1), 3000)
    late = rng.random(3000) < evening
    hour = np.where(late, rng.integers(18, 24, 3000), rng.integers(0, 18, 3000))
    moments = base + pd.to_timedelta(days * 24 + hour, unit="h")
    return pd.DataFrame({"departs": moments.strftime("%d/%m/%Y %H:%M"),
                         "grade": rng.choice(["low", "mid", "high"], 3000, p=[0.5, 0.3, 0.2])})


DATED = {"departs": "datetime", "grade": "categorical"}
SPECS = {"departs": ColumnSpec(name="departs", dtype="datetime", format="%d/%m/%Y %H:%M", min="2024-01-01",
                               max="2024-12-31"),
         "grade": ColumnSpec(name="grade", dtype="ordinal", categories=("low", "mid", "high"))}


def test_a_datetime_is_not_drift_because_time_moves_on() -> None:
    """Training covered January to June; a later week of the same pattern is not drift, and is reported as later."""
    reference, current = traffic("2024-01-01", 24 * 180, 1), traffic("2024-09-02", 24 * 7, 2)
    report = compare(reference, current, DATED, DEFAULTS, SPECS)
    assert report.drifted == []
    departs = report.features["departs"]
    assert departs.status == NOT_TESTED and departs.kind == "datetime" and departs.test == "none"
    assert departs.outside_reference == 1.0  # every value later than the training data: said, not judged
    assert departs.range_current[0].startswith("2024-09-02") and departs.range_reference[0].startswith("2024-01-01")
    assert departs.out_of_range == 0.0 and departs.parts == ("departs.hour", "departs.dayofweek")
    for part in departs.parts:
        assert report.features[part].status == "ok" and report.features[part].kind == "categorical"
    assert "no drift verdict" in departs.describe() and "departs.hour" in departs.describe()
    assert json.loads(json.dumps(report.to_json()))["features"]["departs"]["range_current"] == \
        list(departs.range_current)


def test_a_changed_hour_of_day_pattern_is_drift_of_the_hour_part() -> None:
    reference, current = traffic("2024-01-01", 24 * 180, 3), traffic("2024-07-01", 24 * 7, 4, evening=0.8)
    report = compare(reference, current, DATED, DEFAULTS, SPECS)
    assert report.drifted == ["departs.hour"]
    assert report.features["departs.hour"].test == "chi2" and report.features["departs"].status == NOT_TESTED


def test_a_day_of_traffic_compares_the_hour_but_not_the_day_of_week() -> None:
    reference, current = traffic("2024-01-01", 24 * 180, 5), traffic("2024-07-01", 24, 6)
    report = compare(reference, current, DATED, DEFAULTS, SPECS)
    assert report.features["departs"].parts == ("departs.hour",) and "departs.dayofweek" not in report.features
    hours_only = traffic("2024-07-01", 24, 7)
    hours_only["departs"] = "01/07/2024 10:00"  # one instant: no cycle at all
    report = compare(reference, hours_only, DATED, DEFAULTS, SPECS)
    assert report.features["departs"].parts == () and "nothing" in report.features["departs"].describe()


def test_datetimes_out_of_the_schema_range_and_unparseable_ones_are_counted() -> None:
    reference, current = traffic("2024-01-01", 24 * 180, 8), traffic("2024-12-20", 24 * 30, 9)
    current.loc[:9, "departs"] = "not a date"
    report = compare(reference, current, DATED, DEFAULTS, SPECS)
    departs = report.features["departs"]
    assert departs.missing_current == pytest.approx(10 / 3000)  # unreadable: left out like a missing value
    assert 0.55 < departs.out_of_range < 0.7  # from 2024-12-31T00:00 on is past the schema's max (19 of 30 days)


def test_an_ordinal_is_compared_as_a_category_and_values_outside_its_categories_counted() -> None:
    reference, current = traffic("2024-01-01", 24 * 180, 10), traffic("2024-01-01", 24 * 180, 11)
    current["grade"] = np.random.default_rng(12).choice(["low", "mid", "high", "top"], 3000, p=[0.1, 0.2, 0.6, 0.1])
    report = compare(reference, current, DATED, DEFAULTS, SPECS)
    assert "grade" in report.drifted and report.features["grade"].test == "chi2"
    assert report.features["grade"].out_of_range == pytest.approx(0.1, abs=0.03)


def test_the_report_plots_a_datetime_and_its_parts() -> None:
    from include.monitoring import report as html_report

    reference, current = traffic("2024-01-01", 24 * 180, 13), traffic("2024-07-01", 24 * 7, 14)
    compared = compare(reference, current, DATED, DEFAULTS, SPECS)
    page = html_report.render("t", ["line"], compared, reference, current, None)
    for name in ("departs", "departs.hour", "departs.dayofweek", "grade"):
        assert f'alt="{name}"' in page
    assert "not tested" in page
