"""Drift statistics on data the tests make: no false alarms between random halves, the shifted features found."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from include.ml.entities import ColumnSpec, DriftThresholds, MonitoringPolicy
from include.monitoring.drift import DRIFTED, NOT_ENOUGH_DATA, compare, compare_one

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
