"""Live quality: the candidate's loss against the champion's on the same labelled rows, judged sequentially.

Each observation is signed so that positive means the candidate is worse:
- per row, for the metrics that are means over rows: d_i = loss(candidate_i) - loss(champion_i), with the loss
  squared error (rmse, r2: on the same rows both are monotone in the mean squared error), absolute error (mae),
  0/1 error (accuracy), -log p(true class) (log_loss, clipped at float64's eps as scikit-learn does), or half the
  squared distance of the probabilities to the one-hot truth (brier_score, as include/ml/metrics.py scales it);
- per block, for the others (roc_auc, pr_auc, balanced_accuracy, f1_macro): consecutive blocks of
  quality.block_rows pairs in capture order; one observation is the block's metric of the champion minus the
  candidate's (higher is better) as include/ml/metrics.py computes it. A block where it is undefined (one class
  only) is left out and counted.
The confidence sequence of sequential.py on these observations gives the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from include.ml.metrics import prediction_metrics, probability_metrics
from include.ml.params_file import METRICS
from include.release.evidence.pairs import ROLES, LabelledPairs
from include.release.evidence.sequential import Bounds, confidence_bounds, verdict
from include.release.evidence.settings import EvidenceError, QualityTest

QualityVerdict = Literal["worse", "not_worse", "inconclusive", "no_labels"]
ROW_METRICS = frozenset({"rmse", "r2", "mae", "accuracy", "log_loss", "brier_score"})
BLOCK_METRICS = frozenset({"roc_auc", "pr_auc", "balanced_accuracy", "f1_macro"})
NEEDS_PROBABILITIES = frozenset({"log_loss", "brier_score", "roc_auc", "pr_auc"})


def _onehot(pairs: LabelledPairs) -> np.ndarray:
    return (pairs.y.astype(str)[:, None] == np.asarray(pairs.classes, dtype=str)[None, :]).astype(np.float64)


def _row_losses(pairs: LabelledPairs, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(champion, candidate) per-row losses of a ROW_METRICS metric."""
    if metric in ("rmse", "r2"):
        return (pairs.champion - pairs.y) ** 2, (pairs.candidate - pairs.y) ** 2
    if metric == "mae":
        return np.abs(pairs.champion - pairs.y), np.abs(pairs.candidate - pairs.y)
    if metric == "accuracy":
        return (pairs.champion != pairs.y).astype(np.float64), (pairs.candidate != pairs.y).astype(np.float64)
    truth, (champion, candidate) = _onehot(pairs), _probabilities(pairs, metric)
    if metric == "log_loss":
        eps = np.finfo(np.float64).eps
        return (-np.log(np.clip((champion * truth).sum(axis=1), eps, 1 - eps)),
                -np.log(np.clip((candidate * truth).sum(axis=1), eps, 1 - eps)))
    return ((champion - truth) ** 2).sum(axis=1) / 2, ((candidate - truth) ** 2).sum(axis=1) / 2


def _probabilities(pairs: LabelledPairs, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if pairs.champion_proba is None or pairs.candidate_proba is None or not pairs.classes:
        raise EvidenceError(f"live {metric} needs both models' class probabilities, and the paired capture rows "
                            "lack them (captured by a server that did not record them?)")
    return pairs.champion_proba, pairs.candidate_proba


def _block_metric(pairs: LabelledPairs, metric: str) -> Callable[[slice, str], float | None]:
    def score(rows: slice, role: str) -> float | None:
        y = pairs.y[rows].astype(str)
        if metric in NEEDS_PROBABILITIES:
            proba = _probabilities(pairs, metric)[ROLES.index(role)]
            return probability_metrics(y, proba[rows], list(pairs.classes)).get(metric)
        predicted = (pairs.champion if role == "champion" else pairs.candidate)[rows]
        return prediction_metrics("classification", y, predicted.astype(str)).get(metric)
    return score


@dataclass(frozen=True)
class Observations:
    values: np.ndarray
    unit: Literal["row", "block"]
    rows: int  # labelled pairs used
    rows_left_out: int  # without probabilities of both models, or with a label not among the classes
    blocks_left_out: int = 0  # where the metric is undefined (one class only)

    def note(self) -> str | None:
        parts = [f"{self.rows_left_out} labelled row(s) left out (no probabilities, or a label the models do not "
                 "know)"] if self.rows_left_out else []
        if self.blocks_left_out:
            parts.append(f"{self.blocks_left_out} block(s) left out (the metric is undefined on them)")
        return "; ".join(parts) or None


def observations(pairs: LabelledPairs, metric: str, block_rows: int) -> Observations:
    """The paired differences of `metric` (module docstring), in capture order. Raises EvidenceError for a metric
    the task does not have, or one needing probabilities that were not captured."""
    higher_is_better = METRICS.get(pairs.task, {}).get(metric)
    if higher_is_better is None:
        raise EvidenceError(f"{metric!r} is not a {pairs.task} metric (one of {sorted(METRICS.get(pairs.task, {}))})")
    usable = np.ones(len(pairs), dtype=bool)
    if metric in NEEDS_PROBABILITIES:
        champion, candidate = _probabilities(pairs, metric)
        known = np.isin(pairs.y.astype(str), np.asarray(pairs.classes, dtype=str))
        usable = known & np.isfinite(champion).all(axis=1) & np.isfinite(candidate).all(axis=1)
    kept = _subset(pairs, usable)
    if metric in ROW_METRICS:
        champion, candidate = _row_losses(kept, metric)
        return Observations(candidate - champion, "row", len(kept), int((~usable).sum()))
    values, undefined = _blocks(kept, metric, block_rows)
    signed = values if higher_is_better else -values  # metric(champion) - metric(candidate) or its opposite
    return Observations(signed, "block", len(kept), int((~usable).sum()), undefined)


def _blocks(pairs: LabelledPairs, metric: str, block_rows: int) -> tuple[np.ndarray, int]:
    """metric(champion) - metric(candidate) of each complete block where both are defined, and how many are not."""
    count = len(pairs) // block_rows
    if metric == "roc_auc" and len(pairs.classes) == 2:
        champion, candidate = _probabilities(pairs, metric)
        positive = (pairs.y[:count * block_rows].astype(str) == str(pairs.classes[1])).reshape(count, block_rows)
        scores = [_binary_auc(positive, p[:count * block_rows, 1].reshape(count, block_rows))
                  for p in (champion, candidate)]
        defined = np.isfinite(scores[0]) & np.isfinite(scores[1])
        return (scores[0] - scores[1])[defined], int((~defined).sum())
    score = _block_metric(pairs, metric)
    values, undefined = [], 0
    for first in range(0, count * block_rows, block_rows):
        rows = slice(first, first + block_rows)
        champ, cand = score(rows, "champion"), score(rows, "candidate")
        if champ is None or cand is None:
            undefined += 1
        else:
            values.append(champ - cand)
    return np.asarray(values, dtype=np.float64), undefined


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row's area under the ROC curve as the Mann-Whitney statistic with mid-ranks for ties: the value
    include/ml/metrics.py's roc_auc gives for two classes (tests/release check it), in one pass over all blocks;
    NaN for a block with one class only."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _subset(pairs: LabelledPairs, keep: np.ndarray) -> LabelledPairs:
    if keep.all():
        return pairs
    def rows(proba: np.ndarray | None) -> np.ndarray | None:
        return None if proba is None else proba[keep]
    return LabelledPairs(pairs.task, pairs.y[keep], pairs.champion[keep], pairs.candidate[keep], pairs.classes,
                         rows(pairs.champion_proba), rows(pairs.candidate_proba), pairs.captured)


@dataclass(frozen=True)
class Quality:
    verdict: QualityVerdict
    metric: str
    unit: str | None
    bounds: Bounds | None
    rows: int
    note: str | None = None

    def figures(self) -> dict[str, Any]:
        cs = self.bounds.figures() if self.bounds else {}
        return {"quality": self.verdict, "quality_metric": self.metric, "quality_unit": self.unit,
                "quality_rows": self.rows, **{f"quality_{k}": v for k, v in cs.items()},
                **({"quality_note": self.note} if self.note else {})}

    def describe(self) -> str:
        if self.bounds is None or self.bounds.n == 0:
            return f"live {self.metric}: {self.verdict} ({self.note or 'no labelled pairs'})"
        b = self.bounds
        low, high = (f"{v:+.4g}" for v in (b.lower, b.upper))
        return (f"live {self.metric}: {self.verdict}; candidate - champion loss per {self.unit} "
                f"{b.mean:+.4g} in [{low}, {high}] over {b.n} {self.unit}s ({self.rows} labelled pairs)")


def judge_quality(pairs: LabelledPairs | None, metric: str, test: QualityTest) -> Quality:
    """The sequential verdict on the candidate's live `metric` against the champion's (no_labels without pairs)."""
    if pairs is None or len(pairs) == 0:
        note = "no labels configured (monitoring.ground_truth_uri)" if pairs is None else \
            f"none of the {pairs.captured} paired rows has a label yet"
        return Quality("no_labels", metric, None, None, 0, note)
    found = observations(pairs, metric, test.block_rows)
    if found.unit == "row":
        bounds = confidence_bounds(found.values, test.alpha, test.target_rows, test.min_rows)
    else:
        bounds = confidence_bounds(found.values, test.alpha, test.target_rows / test.block_rows, test.min_blocks)
    return Quality(verdict(bounds, test.margin), metric, found.unit, bounds, found.rows, found.note())
