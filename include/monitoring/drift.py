"""Drift statistics (scipy): each feature of live data against the same feature of the reference data.

- numeric: the two-sample Kolmogorov-Smirnov test, and the population stability index (PSI) on the reference's
  quantile bins as the effect size;
- categorical: the chi-square test of the two count vectors, and the Jensen-Shannon distance (base 2) of the shares.

A feature drifts when its p-value, corrected for testing every feature (Bonferroni or Benjamini-Hochberg), is below
`p_value` AND its distance is past the threshold: with thousands of rows a tiny difference is significant, so the
size of the difference must matter too. Fewer than `min_rows` values on either side is "not enough data", never
drift. Missing values are left out of the tests and reported as rates, as are values outside schema.yaml's range.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd

from include.ml.entities import ColumnSpec, MonitoringPolicy

log = logging.getLogger(__name__)

Kind = Literal["numeric", "categorical"]
DRIFTED, OK, NOT_ENOUGH_DATA = "drifted", "ok", "not enough data"
_EMPTY_SHARE = 1e-4  # stands in for an empty bin's share in the PSI's logarithm


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: Kind
    status: str  # drifted | ok | not enough data
    test: str  # ks | chi2
    statistic: float | None  # the KS D or the chi-square statistic
    p_value: float | None  # as tested
    p_adjusted: float | None  # corrected across the features
    distance_name: str  # psi | jensen_shannon
    distance: float | None
    rows_reference: int  # non-missing values compared
    rows_current: int
    missing_reference: float  # share of missing values
    missing_current: float
    out_of_range: float | None  # share of current values outside schema.yaml's range / allowed values
    threshold_p_value: float
    threshold_distance: float

    @property
    def drifted(self) -> bool:
        return self.status == DRIFTED

    def describe(self) -> str:
        if self.status == NOT_ENOUGH_DATA:
            return f"{self.name}: not enough data ({self.rows_current} current, {self.rows_reference} reference rows)"
        return (f"{self.name}: {self.test} {self.statistic:.4g}, p {self.p_value:.3g} "
                f"(corrected {self.p_adjusted:.3g}), {self.distance_name} {self.distance:.4g}; "
                f"drift is corrected p < {self.threshold_p_value} and "
                f"{self.distance_name} > {self.threshold_distance}")

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "name"}, "drifted": self.drifted}


@dataclass(frozen=True)
class DriftReport:
    features: dict[str, FeatureDrift]
    rows_reference: int
    rows_current: int
    prediction: FeatureDrift | None = None  # the predictions against the champion's own, when measured

    @property
    def drifted(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def not_enough_data(self) -> bool:
        return all(f.status == NOT_ENOUGH_DATA for f in self.features.values())

    def to_json(self) -> dict[str, Any]:
        """The CLI's --json contract: drifted, features, rows (and the prediction drift when measured)."""
        payload: dict[str, Any] = {"drifted": self.drifted,
                                   "features": {n: f.to_json() for n, f in self.features.items()},
                                   "rows": {"reference": self.rows_reference, "current": self.rows_current}}
        if self.prediction is not None:
            payload["prediction"] = self.prediction.to_json()
        return payload


def kinds_from_schema(columns: tuple[ColumnSpec, ...]) -> dict[str, Kind]:
    return {c.name: "numeric" if c.is_numeric else "categorical" for c in columns}


def compare(reference: pd.DataFrame, current: pd.DataFrame, kinds: Mapping[str, Kind], params: MonitoringPolicy,
            specs: Mapping[str, ColumnSpec] | None = None) -> DriftReport:
    """Every feature of `kinds` in `current` against `reference`, corrected for testing them all."""
    tested = {name: _test(reference[name], current[name], kind, params) for name, kind in kinds.items()}
    names = [n for n, t in tested.items() if t is not None]
    adjusted = dict(zip(names, _correct([tested[n][1] for n in names], params.correction)))  # type: ignore[index]
    features = {}
    for name, kind in kinds.items():
        thresholds = _thresholds(name, kind, params)
        features[name] = _feature(name, kind, reference[name], current[name], tested[name], adjusted.get(name),
                                  thresholds, (specs or {}).get(name))
    return DriftReport(features, len(reference), len(current))


def compare_one(name: str, reference: pd.Series, current: pd.Series, kind: Kind,
                params: MonitoringPolicy) -> FeatureDrift:
    """One series tested alone (the predictions): no correction, the global thresholds."""
    tested = _test(reference, current, kind, params)
    return _feature(name, kind, reference, current, tested, None if tested is None else tested[1],
                    _thresholds(name, kind, params), None)


def _thresholds(name: str, kind: Kind, params: MonitoringPolicy) -> tuple[float, float]:
    own = params.features.get(name)
    p_value = own.p_value if own and own.p_value is not None else params.p_value
    if kind == "numeric":
        return p_value, own.psi if own and own.psi is not None else params.psi
    return p_value, own.jensen_shannon if own and own.jensen_shannon is not None else params.jensen_shannon


def _test(reference: pd.Series, current: pd.Series, kind: Kind,
          params: MonitoringPolicy) -> tuple[float, float, float] | None:
    """(statistic, p-value, distance), or None with fewer than min_rows values on either side."""
    ref, cur = reference.dropna(), current.dropna()
    if len(ref) < params.min_rows or len(cur) < params.min_rows:
        return None
    if kind == "numeric":
        from scipy import stats

        ref_values, cur_values = ref.to_numpy(dtype=float), cur.to_numpy(dtype=float)
        ks = stats.ks_2samp(ref_values, cur_values)
        return float(ks.statistic), float(ks.pvalue), psi(ref_values, cur_values, params.bins)
    return _categorical(ref.astype(str), cur.astype(str))


def psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """Population stability index on the reference's quantile bins (open-ended at both sides)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur_share = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    ref_share, cur_share = np.maximum(ref_share, _EMPTY_SHARE), np.maximum(cur_share, _EMPTY_SHARE)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def _categorical(reference: pd.Series, current: pd.Series) -> tuple[float, float, float]:
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    counts = pd.concat([reference.value_counts().rename("reference"), current.value_counts().rename("current")],
                       axis=1).fillna(0)
    if len(counts) < 2:  # one category on both sides: nothing can differ
        return 0.0, 1.0, 0.0
    chi2 = stats.chi2_contingency(counts.to_numpy().T)
    distance = jensenshannon(counts["reference"].to_numpy(), counts["current"].to_numpy(), base=2)
    return float(chi2.statistic), float(chi2.pvalue), float(distance)


def _correct(p_values: list[float], method: str) -> list[float]:
    if not p_values:
        return []
    if method == "bonferroni":
        return [min(1.0, p * len(p_values)) for p in p_values]
    from scipy import stats

    return [float(p) for p in stats.false_discovery_control(p_values, method="bh")]


def _feature(name: str, kind: Kind, reference: pd.Series, current: pd.Series,
             tested: tuple[float, float, float] | None, p_adjusted: float | None, thresholds: tuple[float, float],
             spec: ColumnSpec | None) -> FeatureDrift:
    p_threshold, distance_threshold = thresholds
    if tested is None:
        status, (statistic, p_value, distance) = NOT_ENOUGH_DATA, (None, None, None)
    else:
        statistic, p_value, distance = tested
        drifted = p_adjusted is not None and p_adjusted < p_threshold and distance > distance_threshold
        status = DRIFTED if drifted else OK
    return FeatureDrift(
        name=name, kind=kind, status=status, test="ks" if kind == "numeric" else "chi2", statistic=statistic,
        p_value=p_value, p_adjusted=p_adjusted, distance_name="psi" if kind == "numeric" else "jensen_shannon",
        distance=distance, rows_reference=int(reference.notna().sum()), rows_current=int(current.notna().sum()),
        missing_reference=_missing(reference), missing_current=_missing(current),
        out_of_range=out_of_range(current, spec), threshold_p_value=p_threshold,
        threshold_distance=distance_threshold)


def _missing(values: pd.Series) -> float:
    return float(values.isna().mean()) if len(values) else 0.0


def out_of_range(values: pd.Series, spec: ColumnSpec | None) -> float | None:
    """The share of present values outside the column's min/max or allowed values; None without a rule."""
    present = values.dropna()
    if spec is None or present.empty:
        return None
    if spec.is_numeric and (spec.min is not None or spec.max is not None):
        numbers = present.astype(float)
        outside = ((numbers < spec.min) if spec.min is not None else False) | \
                  ((numbers > spec.max) if spec.max is not None else False)
        return float(np.mean(outside))
    if spec.allowed:
        return float((~present.astype(str).isin({str(a) for a in spec.allowed})).mean())
    return None
