"""Agreement: how often the candidate's prediction agrees with the champion's on the same rows (paired requests).

Regression: the histogram serving_release_agreement of |candidate - champion| / max(|champion|, 1e-9) per row; the
share agreeing is the histogram's cumulative share at agreement.tolerance (linear inside a bucket when the
tolerance is no bucket bound). Classification: serving_release_pairs_total{agree="true"|"false"}. Alarm when the
share is below agreement.min, once `min_requests` pairs are in the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from include.release.evidence.settings import AgreementLimits, Task
from include.release.evidence.window import Window

RELATIVE = "serving_release_agreement"
PAIRS = "serving_release_pairs_total"


def share_at_most(buckets: Sequence[tuple[float, float]], value: float) -> float | None:
    """The share of a histogram's observations <= value (cumulative (bound, count) buckets, +Inf last)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total, lower, below = buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if value <= bound:
            if math.isinf(bound) or bound == lower:
                return below / total
            return (below + (count - below) * (value - lower) / (bound - lower)) / total
        lower, below = bound, count
    return 1.0


@dataclass(frozen=True)
class Agreement:
    pairs: float
    share: float | None
    minimum: float
    alarm: str | None

    def figures(self) -> dict[str, Any]:
        return {"agreement_pairs": self.pairs, "agreement": self.share, "agreement_min": self.minimum}


def judge_agreement(counts: Window, task: Task, limits: AgreementLimits, min_requests: int) -> Agreement:
    """The share of pairs that agree over the window, and the alarm (None when enough agree or too few pairs)."""
    minimum = limits.minimum(task)
    if task == "regression":
        buckets = counts.buckets(RELATIVE)
        pairs = buckets[-1][1] if buckets else 0.0
        share = share_at_most(buckets, limits.tolerance)
        what = f"within {limits.tolerance:g} relative difference"
    else:
        agree, disagree = counts.total(PAIRS, agree="true"), counts.total(PAIRS, agree="false")
        pairs = agree + disagree
        share = agree / pairs if pairs else None
        what = "with the same label"
    alarm = None
    if share is not None and pairs >= min_requests and share < minimum:
        alarm = (f"candidate agrees with the champion on {share:.1%} of {pairs:.0f} paired rows ({what}), below "
                 f"agreement.min {minimum:.0%}")
    return Agreement(pairs, share, minimum, alarm)
