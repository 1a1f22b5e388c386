"""The always-valid test on a paired difference: an asymptotic confidence sequence for its mean.

Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas (2021), "Time-uniform central limit theory and asymptotic confidence
sequences", the Gaussian-mixture AsympCS: for observations d_1, d_2, ... with mean mu, after t of them

    mu_hat_t +/- sigma_hat_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

covers mu at every t at once with probability >= 1 - alpha (asymptotically), so the bounds may be looked at after
every new observation and the first look that excludes a value is as trustworthy as a fixed-sample test. rho sets
where the bounds are tightest; rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t_opt makes them tightest at t_opt
observations (Howard, Ramdas, McAuliffe & Sekhon 2021). docs/live-evidence.md has the derivation and the
measured false-abort rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["worse", "not_worse", "inconclusive"]


@dataclass(frozen=True)
class Bounds:
    """The confidence sequence after `n` observations; lower/upper are -inf/+inf below the minimum to judge."""

    n: int
    mean: float
    sd: float
    lower: float
    upper: float

    def figures(self) -> dict[str, float | int | None]:
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None
        return {"n": self.n, "mean": finite(self.mean), "sd": finite(self.sd), "lower": finite(self.lower),
                "upper": finite(self.upper)}


def rho_squared(alpha: float, target_n: float) -> float:
    """The mixture's rho^2 that makes the bounds tightest after `target_n` observations."""
    if not 0 < alpha < 1 or target_n <= 0:
        raise ValueError(f"alpha must lie in (0, 1) and target_n be positive, got {alpha} and {target_n}")
    log_term = -2 * math.log(alpha)
    return (log_term + math.log(log_term + 1)) / target_n


def margin_per_sd(n: int, alpha: float, rho2: float) -> float:
    """The half-width of the sequence after `n` observations, in standard deviations of one observation."""
    grown = n * rho2 + 1
    return math.sqrt(2 * grown / (n * n * rho2) * math.log(math.sqrt(grown) / alpha))


def confidence_bounds(values: np.ndarray, alpha: float, target_n: float, min_n: int = 2) -> Bounds:
    """The (1 - alpha) confidence sequence for the mean of `values` (in arrival order) at their current count."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise ValueError("the observations must be a one-dimensional array of finite numbers")
    n = len(data)
    if n == 0:
        return Bounds(0, math.nan, math.nan, -math.inf, math.inf)
    mean = float(data.mean())
    sd = float(data.std(ddof=1)) if n > 1 else math.nan
    if n < max(min_n, 2):
        return Bounds(n, mean, sd, -math.inf, math.inf)
    half = sd * margin_per_sd(n, alpha, rho_squared(alpha, target_n))
    return Bounds(n, mean, sd, mean - half, mean + half)


def verdict(bounds: Bounds, margin: float) -> Verdict:
    """worse: the whole sequence lies above `margin` (the candidate is worse by more than it); not_worse: below it;
    else inconclusive. Observations are signed so that positive means the candidate is worse."""
    if bounds.lower > margin:
        return "worse"
    if bounds.upper < margin:
        return "not_worse"
    return "inconclusive"
