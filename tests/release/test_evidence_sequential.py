"""The always-valid test on paired differences: A/A false aborts under peeking, power against a worse candidate.

Seed setup (docs/live-evidence.md quotes these figures): trial k uses numpy.random.default_rng(k) for the A/A
trials and default_rng(10_000 + k) for the power trials, k = 0..99. A trial looks after every 20 labelled pairs up
to 2,000 and aborts at the first look whose verdict is `worse`; a false abort is an A/A trial that aborts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from include.release.evidence.pairs import LabelledPairs
from include.release.evidence.quality import BLOCK_METRICS, judge_quality, observations
from include.release.evidence.sequential import confidence_bounds, margin_per_sd, rho_squared, verdict
from include.release.evidence.settings import QualityTest

TRIALS, LOOK_EVERY, BUDGET = 100, 20, 2_000
TEST = QualityTest()  # the defaults: alpha 0.05, margin 0, block_rows 100, target_rows 1000


def regression_pairs(seed: int, candidate_noise: float = 1.0) -> LabelledPairs:
    """Truth ~ N(0, 1); the champion's error ~ N(0, 1); the candidate's ~ N(0, candidate_noise), independent."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=BUDGET)
    return LabelledPairs("regression", y, y + rng.normal(size=BUDGET), y + rng.normal(scale=candidate_noise,
                                                                                         size=BUDGET))


def binary_pairs(seed: int, candidate_noise: float = 1.0) -> LabelledPairs:
    """A latent score s ~ N(0, 1), y = pos when s + logistic noise > 0; each model sees s plus its own normal noise
    (the champion sd 1, the candidate sd candidate_noise) and predicts sigmoid of it."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=BUDGET)
    y = np.where(s + rng.logistic(size=BUDGET) > 0, "pos", "neg").astype(object)

    def model(noise: float) -> tuple[np.ndarray, np.ndarray]:
        p = 1 / (1 + np.exp(-(s + rng.normal(scale=noise, size=BUDGET))))
        return np.where(p > 0.5, "pos", "neg").astype(object), np.column_stack([1 - p, p])

    (champ, champ_p), (cand, cand_p) = model(1.0), model(candidate_noise)
    return LabelledPairs("classification", y, champ, cand, ("neg", "pos"), champ_p, cand_p)


def prefix(pairs: LabelledPairs, n: int) -> LabelledPairs:
    proba = (None if p is None else p[:n] for p in (pairs.champion_proba, pairs.candidate_proba))
    return LabelledPairs(pairs.task, pairs.y[:n], pairs.champion[:n], pairs.candidate[:n], pairs.classes, *proba)


def first_abort(pairs: LabelledPairs, metric: str) -> int | None:
    """The pairs seen at the first look that says `worse` (judge_quality on the pairs so far); None: never. For a
    block metric, a look before the next block is complete sees the same blocks as the look before it, so it has
    that look's verdict (not computed again: the same numbers, five times faster)."""
    judged: tuple[int, str] | None = None
    for n in range(LOOK_EVERY, BUDGET + 1, LOOK_EVERY):
        seen = n // TEST.block_rows if metric in BLOCK_METRICS else n
        if judged is None or judged[0] != seen:
            judged = (seen, judge_quality(prefix(pairs, n), metric, TEST).verdict)
        if judged[1] == "worse":
            return n
    return None


def report(name: str, found: list[int | None]) -> tuple[int, float | None]:
    aborted = [n for n in found if n is not None]
    median = float(np.median(aborted)) if aborted else None
    slow = float(np.percentile(aborted, 90)) if aborted else None
    print(f"\n{name}: {len(aborted)} of {len(found)} trials aborted; pairs at abort: median {median}, 90th "
          f"percentile {slow}")
    return len(aborted), median


def test_the_half_width_is_the_gaussian_mixture_boundary() -> None:
    rho2 = rho_squared(0.05, 1000)
    assert rho2 == pytest.approx((-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 1000)
    t = 1000
    assert margin_per_sd(t, 0.05, rho2) == pytest.approx(
        math.sqrt(2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / 0.05)))
    # the price of looking at any time: at its target, about 3.0 / sqrt(t) against a fixed-sample 1.96 / sqrt(t)
    assert 2.9 / math.sqrt(t) < margin_per_sd(t, 0.05, rho2) < 3.1 / math.sqrt(t)


def test_no_verdict_before_the_minimum_and_the_verdicts_follow_the_bounds() -> None:
    few = confidence_bounds(np.full(10, 5.0), 0.05, 1000, min_n=30)
    assert (few.lower, few.upper) == (-math.inf, math.inf) and verdict(few, 0.0) == "inconclusive"
    rng = np.random.default_rng(1)
    assert verdict(confidence_bounds(rng.normal(1.0, 1.0, 500), 0.05, 1000), 0.0) == "worse"
    assert verdict(confidence_bounds(rng.normal(-1.0, 1.0, 500), 0.05, 1000), 0.0) == "not_worse"
    assert verdict(confidence_bounds(rng.normal(1.0, 1.0, 500), 0.05, 1000), 2.0) == "not_worse"  # within margin
    with pytest.raises(ValueError, match="finite"):
        confidence_bounds(np.array([1.0, math.nan]), 0.05, 1000)


def test_a_a_false_abort_rate_per_row_metric_rmse() -> None:
    aborted, _ = report("A/A rmse (per row)", [first_abort(regression_pairs(k), "rmse")
                                               for k in range(TRIALS)])
    assert aborted <= 0.05 * TRIALS


def test_a_a_false_abort_rate_block_metric_roc_auc() -> None:
    aborted, _ = report("A/A roc_auc (blocks of 100)", [first_abort(binary_pairs(k), "roc_auc")
                                                        for k in range(TRIALS)])
    assert aborted <= 0.05 * TRIALS


@pytest.mark.parametrize("metric", ["mae", "accuracy", "log_loss"])
def test_a_a_false_abort_rate_other_metrics(metric: str) -> None:
    make = regression_pairs if metric == "mae" else binary_pairs
    aborted, _ = report(f"A/A {metric}", [first_abort(make(k), metric) for k in range(TRIALS)])
    assert aborted <= 0.05 * TRIALS


def test_a_clearly_worse_candidate_is_caught_early_rmse() -> None:
    """The candidate's error sd 1.5 against the champion's 1.0 (rmse 1.5 against 1.0)."""
    aborted, median = report("worse rmse (error sd 1.5 vs 1.0)",
                             [first_abort(regression_pairs(10_000 + k, 1.5), "rmse") for k in range(TRIALS)])
    assert aborted >= 0.95 * TRIALS and median is not None and median <= 300


def test_a_clearly_worse_candidate_is_caught_roc_auc() -> None:
    """The candidate's score noise sd 2.5 against the champion's 1.0 (roc_auc about 0.59 against 0.67)."""
    aborted, median = report("worse roc_auc (noise sd 2.5 vs 1.0)",
                             [first_abort(binary_pairs(10_000 + k, 2.5), "roc_auc") for k in range(TRIALS)])
    assert aborted >= 0.9 * TRIALS and median is not None and median <= 1_000


def test_block_roc_auc_is_include_ml_metrics_roc_auc() -> None:
    """The one-pass binary roc_auc of the blocks equals include/ml/metrics.py's, ties included."""
    from include.ml.metrics import probability_metrics

    pairs = binary_pairs(5, 2.0)
    rounded = np.round(pairs.champion_proba, 1)  # many ties
    pairs = LabelledPairs(pairs.task, pairs.y, pairs.champion, pairs.candidate, pairs.classes, rounded,
                          pairs.candidate_proba)
    found = observations(pairs, "roc_auc", 100).values
    for block in range(20):
        rows = slice(block * 100, block * 100 + 100)
        y = pairs.y[rows].astype(str)
        expected = (probability_metrics(y, rounded[rows], ["neg", "pos"])["roc_auc"]
                    - probability_metrics(y, pairs.candidate_proba[rows], ["neg", "pos"])["roc_auc"])
        assert found[block] == pytest.approx(expected, abs=1e-12)
