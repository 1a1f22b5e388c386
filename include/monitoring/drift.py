"""Drift statistics (scipy): each feature of live data against the same feature of the reference data.

- numeric: the two-sample Kolmogorov-Smirnov test, and the population stability index (PSI) on the reference's
  quantile bins as the effect size;
- categorical (categories, ordinals): the chi-square test of the two count vectors, and the Jensen-Shannon distance
  (base 2) of the shares.
- datetime: no verdict on the instants themselves: live traffic is later than the training data by nature, so any
  test of them would say "drifted" every day. The feature is reported (range, the share outside the reference's
  range and outside schema.yaml's min/max, missing values) with the status "not tested", and the parts of it that
  repeat are compared as categorical features named `<column>.hour` (hour of day) and `<column>.dayofweek`: each
  only when the current and the reference values both span its whole cycle (23 hours, 6 days and 23 hours), since
  a day of traffic cannot show a week's pattern. Their thresholds are the datetime feature's own.

A feature drifts when its p-value, corrected for testing every feature (Bonferroni or Benjamini-Hochberg), is below
`p_value` AND its distance is past the threshold: with thousands of rows a tiny difference is significant, so the
size of the difference must matter too. Fewer than `min_rows` values on either side is "not enough data", never
drift. Missing values are left out of the tests and reported as rates, as are values outside schema.yaml's range.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd

from include.ml.params_file import MonitoringPolicy
from include.ml.schema_file import ColumnSpec

log = logging.getLogger(__name__)

Kind = Literal["numeric", "categorical", "datetime"]
DRIFTED, OK, NOT_ENOUGH_DATA, NOT_TESTED = "drifted", "ok", "not enough data", "not tested"
_EMPTY_SHARE = 1e-4  # stands in for an empty bin's share in the PSI's logarithm
# The parts of a datetime compared, and the span (current and reference values alike) each needs: its cycle, less
# the hour a last value of the cycle starts.
CYCLES = {"hour": pd.Timedelta(hours=23), "dayofweek": pd.Timedelta(days=6, hours=23)}


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
    # datetime features (status "not tested"): each side's first and last value (ISO), the share of current values
    # outside the reference's range, and the parts compared in their stead (`<column>.hour`, ...)
    range_reference: tuple[str, str] | None = None
    range_current: tuple[str, str] | None = None
    outside_reference: float | None = None
    parts: tuple[str, ...] | None = None

    @property
    def drifted(self) -> bool:
        return self.status == DRIFTED

    def describe(self) -> str:
        if self.status == NOT_TESTED:
            ranges = " to ".join(self.range_current) if self.range_current else "no values"
            reference = " to ".join(self.range_reference) if self.range_reference else "no values"
            beyond = "" if self.outside_reference is None else \
                f"; {self.outside_reference:.1%} outside the reference's range"
            return (f"{self.name}: datetime, no drift verdict on the instants (traffic is later than training by "
                    f"nature); current {ranges}, reference {reference}{beyond}; compared instead: "
                    f"{', '.join(self.parts) if self.parts else 'nothing (the values span less than a day)'}")
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
    # what was compared where it is not the frames' own column (a datetime's instants, its parts), for the plots
    values: Mapping[str, tuple[pd.Series, pd.Series]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def drifted(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def not_enough_data(self) -> bool:
        return all(f.status in (NOT_ENOUGH_DATA, NOT_TESTED) for f in self.features.values())

    def to_json(self) -> dict[str, Any]:
        """The CLI's --json contract: drifted, features, rows (and the prediction drift when measured)."""
        payload: dict[str, Any] = {"drifted": self.drifted,
                                   "features": {n: f.to_json() for n, f in self.features.items()},
                                   "rows": {"reference": self.rows_reference, "current": self.rows_current}}
        if self.prediction is not None:
            payload["prediction"] = self.prediction.to_json()
        return payload


def kinds_from_schema(columns: tuple[ColumnSpec, ...]) -> dict[str, Kind]:
    return {c.name: "numeric" if c.is_numeric else "datetime" if c.dtype == "datetime" else "categorical"
            for c in columns}


def compare(reference: pd.DataFrame, current: pd.DataFrame, kinds: Mapping[str, Kind], params: MonitoringPolicy,
            specs: Mapping[str, ColumnSpec] | None = None) -> DriftReport:
    """Every feature of `kinds` in `current` against `reference`, corrected for testing them all. A datetime's
    values are text in its schema format or ISO 8601 (unix numbers for unix formats), or datetime64."""
    specs = specs or {}
    columns: dict[str, tuple[pd.Series, pd.Series]] = {}
    tested_kinds: dict[str, Kind] = {}
    parents: dict[str, str] = {}  # a datetime part -> its datetime feature
    for name, kind in kinds.items():
        if kind != "datetime":
            columns[name], tested_kinds[name] = (reference[name], current[name]), kind
            continue
        fmt = specs[name].format if name in specs else None
        ref, cur = moments(reference[name], fmt), moments(current[name], fmt)
        columns[name] = ref, cur
        for part, cycle in CYCLES.items():
            if _span(ref) >= cycle and _span(cur) >= cycle:
                derived = f"{name}.{part}"
                columns[derived], tested_kinds[derived], parents[derived] = \
                    (_part(ref, part), _part(cur, part)), "categorical", name
    tested = {name: _test(*columns[name], kind, params) for name, kind in tested_kinds.items()}
    names = [n for n, t in tested.items() if t is not None]
    adjusted = dict(zip(names, _correct([tested[n][1] for n in names], params.correction)))  # type: ignore[index]
    features = {}
    for name, kind in kinds.items():
        if kind == "datetime":
            own = [derived for derived, parent in parents.items() if parent == name]
            features[name] = _datetime(name, *columns[name], specs.get(name), own,
                                       _thresholds(name, "categorical", params))
            for derived in own:
                features[derived] = _feature(derived, "categorical", *columns[derived], tested[derived],
                                             adjusted.get(derived), _thresholds(name, "categorical", params), None)
            continue
        features[name] = _feature(name, kind, *columns[name], tested[name], adjusted.get(name),
                                  _thresholds(name, kind, params), specs.get(name))
    derived_values = {name: pair for name, pair in columns.items() if name not in kinds or kinds[name] == "datetime"}
    return DriftReport(features, len(reference), len(current), values=derived_values)


def moments(values: pd.Series, format: str | None = None) -> pd.Series:
    """A datetime column as naive UTC datetime64[ns] (NaT where missing or unparseable), parsed as the server and
    the model parse it (serving.features.parse_datetimes)."""
    from serving.features import parse_datetimes

    return pd.Series(parse_datetimes(values, format)[0], name=values.name)


def _span(values: pd.Series) -> pd.Timedelta:
    present = values.dropna()
    return present.max() - present.min() if len(present) else pd.Timedelta(0)


def _part(values: pd.Series, part: str) -> pd.Series:
    """The hour of day (0-23) or day of week (Monday 0) of each value, as text categories; missing stays missing."""
    numbers = getattr(values.dt, part)
    return numbers.astype("Int64").astype(object).where(values.notna(), None).map(
        lambda v: v if v is None else str(v))


def _datetime(name: str, reference: pd.Series, current: pd.Series, spec: ColumnSpec | None, parts: list[str],
              thresholds: tuple[float, float]) -> FeatureDrift:
    """A datetime feature's report: no test of its instants (see the module's docstring), its ranges instead."""
    def bounds(values: pd.Series) -> tuple[str, str] | None:
        present = values.dropna()
        return (present.min().isoformat(), present.max().isoformat()) if len(present) else None

    ref, cur = reference.dropna(), current.dropna()
    outside = None
    if len(ref) and len(cur):
        outside = float(((cur < ref.min()) | (cur > ref.max())).mean())
    return FeatureDrift(
        name=name, kind="datetime", status=NOT_TESTED, test="none", statistic=None, p_value=None, p_adjusted=None,
        distance_name="none", distance=None, rows_reference=len(ref), rows_current=len(cur),
        missing_reference=_missing(reference), missing_current=_missing(current),
        out_of_range=out_of_range(current, spec), threshold_p_value=thresholds[0], threshold_distance=thresholds[1],
        range_reference=bounds(reference), range_current=bounds(current), outside_reference=outside,
        parts=tuple(parts))


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
    if spec.dtype == "datetime" and (spec.min is not None or spec.max is not None):
        stamps = pd.to_datetime(present)  # already moments (compare parses them): naive UTC
        low, high = (None if v is None else pd.Timestamp(v) for v in spec.moment_range())
        outside = ((stamps < low) if low is not None else False) | ((stamps > high) if high is not None else False)
        return float(np.mean(outside))
    if spec.values:
        return float((~present.astype(str).isin({str(a) for a in spec.values})).mean())
    return None
