"""params.yaml as typed, immutable models: how the model is split, trained, tuned, promoted, released and
monitored.

`configuration.py` reads the file, applies the environment overrides and validates it into `ParamsFile`. Like
every config model (include/ml/frozen.py) they are frozen, strict and closed. Sections a project does not use are
optional; their defaults are the ones written here and documented in docs/configuration.md.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, Field, PlainSerializer, ValidationInfo, field_validator, model_validator

from include.ml.frozen import Frozen, FrozenMapping
from include.ml.models import FAMILIES
from include.ml.release_settings import ReleasePlan

# metric name -> True when a higher value is better (what each one is: include/ml/metrics.py)
METRICS: Mapping[str, Mapping[str, bool]] = MappingProxyType({
    "regression": MappingProxyType({"rmse": False, "mae": False, "r2": True}),
    "classification": MappingProxyType({"accuracy": True, "balanced_accuracy": True, "f1_macro": True,
                                        "roc_auc": True, "pr_auc": True, "log_loss": False, "brier_score": False}),
})


class SplitConfig(Frozen):
    test_size: float = 0.2  # share of rows held out for evaluation and the gate
    random_state: int = 42  # same data + same seed = same split

    @field_validator("test_size")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"expected a number between 0 and 1, got {value}")
        return value


class ModelConfig(Frozen):
    family: str
    random_state: int = 42
    hyperparameters: FrozenMapping = Field(default_factory=dict, strict=False)
    # Classification: the classifier wrapped in scikit-learn's CalibratedClassifierCV (sigmoid: Platt scaling;
    # isotonic), cross-fitted on the training split; none: its own probabilities. Regression: none only.
    calibration: Literal["none", "sigmoid", "isotonic"] = "none"

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"unknown model family {value!r}; expected one of {', '.join(FAMILIES)}")
        return value


class PromotionConfig(Frozen):
    metric: str  # the metric the champion/challenger gate compares on the held-out set
    # The challenger must win by at least this much: a number is absolute (in the metric's units); a text ending in
    # "%", such as "1%", is relative: that share of the champion's value (its absolute value).
    min_improvement: float | str = 0.001

    @field_validator("min_improvement", mode="before")
    @classmethod
    def _number_or_percentage(cls, value: Any) -> float | str:
        problem = ("expected a number >= 0 (absolute) or a percentage such as 1% (of the champion's value), got "
                   + ("null" if value is None else f"{type(value).__name__} {value!r}"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ValueError(problem)
            return float(value)
        if isinstance(value, str) and value.strip().endswith("%"):
            number = value.strip()[:-1].strip()
            try:
                share = float(number)
            except ValueError:
                share = math.nan
            if not math.isfinite(share) or share < 0:
                raise ValueError(problem)
            return f"{number}%"
        raise ValueError(problem)

    @property
    def higher_is_better(self) -> bool:
        return any(metrics.get(self.metric, False) for metrics in METRICS.values())

    @property
    def relative(self) -> bool:
        return isinstance(self.min_improvement, str)

    def margin(self, champion: float) -> float:
        """The least gain over a champion scoring `champion` that promotes a challenger."""
        if isinstance(self.min_improvement, str):
            return float(self.min_improvement[:-1]) / 100 * abs(champion)
        return self.min_improvement


class DriftThresholds(Frozen):
    """Per-feature overrides of the global drift thresholds; a key left out keeps the global value."""

    p_value: float | None = Field(None, gt=0, lt=1)
    psi: float | None = Field(None, gt=0)
    jensen_shannon: float | None = Field(None, gt=0, le=1)


class AttributionPolicy(Frozen):
    """Attribution drift (docs/monitoring.md): what drives the champion's predictions on its traffic against what
    drove them on its held-out rows at evaluate, compared as each input column's share of the mean |attribution|."""

    share_change: float = Field(0.1, gt=0, le=1)  # a column drifts when its share moved by at least this (absolute)
    rows: int = Field(500, ge=1)  # captured rows explained (a sample of them when there are more)
    seconds: float = Field(10.0, gt=0)  # fewer rows when explaining them would take longer than this


class MonitoringPolicy(Frozen):
    """How the monitor decides that live inputs drifted from the champion's training data (docs/monitoring.md).

    A feature drifts only when its test is significant after the correction across features AND its distance is
    past the threshold: with large samples every tiny difference is significant, so the effect size must matter too.
    """

    period_hours: float = Field(24.0, gt=0)  # the captured rows of this many hours before the run's time
    min_rows: int = Field(100, ge=2)  # fewer non-missing values on either side: "not enough data", never drift
    p_value: float = Field(0.05, gt=0, lt=1)  # after the correction for testing many features
    correction: Literal["bonferroni", "benjamini_hochberg"] = "bonferroni"
    psi: float = Field(0.1, gt=0)  # numeric: population stability index on the reference's quantile bins
    jensen_shannon: float = Field(0.1, gt=0, le=1)  # categorical: Jensen-Shannon distance (base 2)
    bins: int = Field(10, ge=2)  # quantile bins of the PSI
    quality_drop: float = Field(0.1, ge=0)  # a live promotion metric this much (relative) worse than the test's
    features: Annotated[Mapping[str, DriftThresholds], AfterValidator(MappingProxyType), PlainSerializer(dict)] = \
        Field(default_factory=dict, strict=False)
    attribution: AttributionPolicy = AttributionPolicy()


class LeakagePolicy(Frozen):
    """The leakage warning at evaluate (include/ml/components/explanations.py, docs/configuration.md): a feature that
    alone explains almost all of the model's score may not be known when a prediction is asked for."""

    share: float = Field(0.6, gt=0, le=1)  # a column's share of the mean |attribution| on the test sample
    # a single-column model (same family, default hyperparameters; the top 3 columns by attribution) reaching this
    # share of the full model's test R^2 (regression) or ROC AUC above chance (classification)
    single_column: float = Field(0.9, gt=0, le=1)
    fail: bool = False  # true: a leakage warning makes the gate refuse promotion
    rows: int = Field(500, ge=10)  # test rows explained, at most
    seconds: float = Field(10.0, gt=0)  # fewer rows when explaining them would take longer than this


class SearchParam(Frozen):
    """One hyperparameter's search range: `low`..`high` (ints when both are ints; `log`: sampled on a log
    scale) or a list of `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = Field(None, strict=False, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        bounds = (self.low, self.high)
        if self.choices is not None:
            if bounds != (None, None) or self.log:
                raise ValueError("give either choices or low/high (and log), not both")
        elif None in bounds:
            raise ValueError("expected low and high (a range) or choices (a list)")
        elif self.low >= self.high:  # type: ignore[operator]
            raise ValueError(f"low ({self.low}) must be less than high ({self.high})")
        elif self.log and self.low <= 0:  # type: ignore[operator]
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


STUDY_DATABASES = ("sqlite", "postgresql", "mysql")  # what tuning.storage may be (a driver after +)


class SearchPlan(Frozen):
    """The `tuning:` section: an Optuna search before training. Without the section there is no tuning."""

    enabled: bool = True
    # The budget: the wall clock first, trials as a cap. No trial starts once timeout_seconds are spent, and a
    # trial running then stops after its current fold (unless no trial has completed yet). None: no clock limit
    # (until n_trials) / no cap (until timeout_seconds); one of the two must be set.
    timeout_seconds: float | None = Field(300, gt=0)
    n_trials: int | None = Field(100, ge=1)
    cv_folds: int = Field(3, ge=2)  # k-fold cross-validation on the training split
    # A trial is judged against the others (and may be pruned) only once this many of its folds are scored;
    # equal to cv_folds: no pruning.
    prune_after_folds: int = Field(2, ge=1)
    seed: int = 42  # same data + same seed = same trials in the same order (how many: the budget)
    families: tuple[str, ...] | None = Field(None, strict=False, min_length=1)  # None: every family
    # family -> hyperparameter -> range; a family listed here is searched over exactly these (replacing
    # its default space in include/ml/models.py).
    search_space: Mapping[str, Mapping[str, SearchParam]] = Field(default_factory=dict, strict=False)
    # Workers running trials against one shared study at once (the DAG's mapped tune_worker tasks; main.py: local
    # processes). Each has its own TPE sampler seeded seed + its index; parallel TPE is not bit-identical across N.
    workers: int = Field(1, ge=1)
    # The study's database, a SQLAlchemy URL: sqlite:///..., postgresql+psycopg2://..., mysql+pymysql://...
    # (its own database: Optuna keeps an alembic_version table). None: a SQLite file in the run's tune folder.
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme.partition("+")[0] not in STUDY_DATABASES:
            raise ValueError(f"expected a SQLAlchemy database URL of {', '.join(STUDY_DATABASES)} (e.g. "
                             f"postgresql+psycopg2://user@host/optuna), got scheme {scheme or 'none'!r}")
        return value

    @field_validator("prune_after_folds")
    @classmethod
    def _within_folds(cls, value: int, info: ValidationInfo) -> int:
        folds = info.data.get("cv_folds")
        if folds is not None and value > folds:
            raise ValueError(f"must be at most cv_folds ({folds}): a trial has no more folds to score "
                             "(equal to cv_folds: no pruning)")
        return value

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for family in value or ():
            ModelConfig._known_family(family)
        return value

    @field_validator("search_space")
    @classmethod
    def _read_only(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        return MappingProxyType(dict(value))  # families and parameter names: checked by the loader

    @model_validator(mode="after")
    def _bounded(self) -> SearchPlan:
        if self.enabled and self.n_trials is None and self.timeout_seconds is None:
            raise ValueError("set n_trials or timeout_seconds (or both): the search needs a budget")
        return self


class ParamsFile(Frozen):
    """params.yaml: how the model is trained and when it replaces the serving one."""

    split: SplitConfig = SplitConfig()
    model: ModelConfig
    promotion: PromotionConfig
    monitoring: MonitoringPolicy = MonitoringPolicy()
    tuning: SearchPlan = SearchPlan(enabled=False)
    release: ReleasePlan = ReleasePlan()  # include/ml/release_settings.py
    leakage: LeakagePolicy = LeakagePolicy()
