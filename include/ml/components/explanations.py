"""Explanations at evaluate: what drives the model's predictions (the card's "What drives predictions"), a warning of
possible leakage, and the reference attribution profile that ml_monitor compares live attributions with.

Every attribution comes from serving/explain.py, the explainer the prediction server's /explain uses: TreeSHAP for
the tree families, elasticnet's exact linear attribution, per input column (one-hot, date and encoded columns summed
back to the column a client sends).

- The global summary explains a sample of the test split: mean |attribution| per input column (the bar), each row's
  attribution per column coloured by the column's value (beeswarm), and the attribution against the value of the
  top TOP columns (dependence).
- Leakage: a column is flagged when its share of the mean |attribution| is at least `leakage.share`, or when a model
  of the same family with default hyperparameters, fitted on the training split on that one column through the same
  preprocessing, reaches `leakage.single_column` of the full model's test skill (R^2; classification: ROC AUC above
  chance, 2 AUC - 1). Only the top TOP columns by attribution are refitted.
- The reference profile: the same mean |attribution| per input column (of held-out rows: a fully grown forest
  reproduces its training rows, noise included, unlike rows it never saw such as live traffic), written to the
  stage dir as PROFILE and logged to the run as explanations/PROFILE.

The sample holds at most `leakage.rows` rows, fewer when the cost per row, timed on a few rows, says explaining them
would take longer than `leakage.seconds`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pandas as pd

from include.ml import artifacts
from include.ml.components import plots
from include.ml.entities import EvaluationConfig, TrainingConfig
from include.ml.params_file import LeakagePolicy, ModelConfig
from include.ml.schema_file import SchemaConfig

log = logging.getLogger(__name__)

ARTIFACT_DIR = "explanations"  # in the training run's MLflow artifacts
PROFILE = "attribution_profile.json"  # in the evaluate stage's dir, and ARTIFACT_DIR/PROFILE in the run
SUMMARY = "summary.json"  # ARTIFACT_DIR/SUMMARY in the run: mean |attribution|, shares, single-column ratios
TAG = "leakage_warning"  # on the training run and the registered version
TOP = 3  # the columns refitted alone, and drawn in the dependence plots
TIMED_ROWS = 5  # the cost per row is timed on this many rows (after one untimed row: first-call costs)
SINGLE_COLUMN_ROWS = 20_000  # a single-column model is fitted on at most this many training rows
SEED = 0  # the samples' and the single-column models' seed
FORESTS = ("random_forest", "extra_trees")  # their single-column models fit trees on every core (n_jobs=-1)
FILES = {plots.ATTRIBUTION: "mean_abs_attribution.png", plots.BEESWARM: "beeswarm.png",
         plots.DEPENDENCE: "dependence.png"}  # each plot's file under ARTIFACT_DIR


@dataclass(frozen=True)
class Explained:
    """One split's sample and its explanations."""

    frame: pd.DataFrame  # the rows explained: the input columns, as split_xy gives them
    explanations: Any  # serving.explain.Explanations
    method: str  # the explainer's: tree_shap | linear
    seconds: float


@dataclass(frozen=True)
class Leak:
    """A column that alone explains almost all of the model's score."""

    column: str
    evidence: tuple[str, ...]  # what showed it, in words

    def message(self) -> str:
        return (f"possible leakage: {self.column} alone explains almost all of the model's score "
                f"({'; '.join(self.evidence)}): is {self.column} known at prediction time?")


@dataclass(frozen=True)
class Summary:
    """What the card shows of the explanations and what evaluate logs; `available` False: why not (`reason`)."""

    available: bool
    reason: str = ""
    method: str = ""
    output: str = ""  # the explained output space: value | probability | log_odds
    towards: str = ""  # what the plotted contributions add up to, in words
    rows: int = 0  # test rows explained
    mean_abs: Mapping[str, float] = field(default_factory=dict)  # input column -> mean |attribution|, largest first
    single_column: Mapping[str, float] = field(default_factory=dict)  # column -> its model's share of the skill
    leaks: tuple[Leak, ...] = ()
    plots: Mapping[str, bytes] = field(default_factory=dict)  # title -> PNG
    calibrated: bool = False  # a calibrated classifier, explained before its calibration

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.mean_abs.values())
        return {c: v / total if total > 0 else 0.0 for c, v in self.mean_abs.items()}

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(leak.message() for leak in self.leaks)


def explain_model(model: Any, config: EvaluationConfig, family: str, x: pd.DataFrame, y: pd.Series,
                  scores: Mapping[str, float], output_dir: Path, train: pd.DataFrame | None = None) -> Summary:
    """Explain the fitted pipeline `model` on a sample of the test rows `x` (true values `y`, its test `scores`);
    look for leakage (the single-column models need the training split `train`); draw the card's plots; write and
    log the reference profile (of the same rows). Logs to the active MLflow run; a model that cannot be explained is
    summarised as unavailable, never fails the evaluation."""
    from serving.explain import ExplainError, build_explainer

    try:
        explainer = build_explainer(model, [c.name for c in config.schema.features])
    except ExplainError as exc:
        log.warning("evaluate: no explanations: %s", exc)
        return Summary(False, reason=str(exc))
    test = explain_sample(explainer, x, config.leakage, "test")
    mean_abs = ranked(test.explanations.mean_abs())
    single = {} if train is None else single_column_ratios(
        model, config, family, train, x, y, scores, list(mean_abs)[:TOP])
    leaks = find_leaks(mean_abs, single, config.leakage, family, _skill_name(config.schema.task))
    for leak in leaks:
        log.warning("evaluate: %s", leak.message())
    towards = _towards(test.explanations)
    inputs = test.frame[list(test.explanations.inputs)]  # the contributions' column order
    figures = plots.explanation_plots(config.schema, inputs, contributions(test.explanations, model, inputs),
                                      mean_abs, towards, TOP)
    summary = Summary(True, "", test.method, test.explanations.output, towards, len(test.frame),
                      MappingProxyType(mean_abs), MappingProxyType(single), leaks, MappingProxyType(figures),
                      bool(test.explanations.calibrated))
    _log(summary, reference_profile(test, output_dir), output_dir)
    return summary


def explain_sample(explainer: Any, frame: pd.DataFrame, policy: Any, split: str, setting: str = "leakage") -> Explained:
    """At most `policy.rows` rows of `frame` (a seeded sample), fewer when their cost, timed on TIMED_ROWS rows after
    a first one, would pass `policy.seconds` (`setting`: where params.yaml sets them, for the log)."""
    from serving.explain import frame_columns

    def explain(part: pd.DataFrame) -> Any:
        return explainer.explain(frame_columns(part, explainer.inputs))

    started = time.perf_counter()
    rows = frame if len(frame) <= policy.rows else frame.sample(policy.rows, random_state=SEED)
    parts = [explain(rows.iloc[:1])]  # untimed: first-call costs
    done = 1 + TIMED_ROWS
    if len(rows) > 1:
        timed = time.perf_counter()
        parts.append(explain(rows.iloc[1:done]))
        per_row = (time.perf_counter() - timed) / len(rows.iloc[1:done])
        affordable = max(done, int(policy.seconds / per_row) if per_row > 0 else len(rows))
        if affordable < len(rows):
            log.info("explaining %d of %d sampled %s rows: %.3f s a row, %s.seconds %s", affordable, len(rows), split,
                     per_row, setting, policy.seconds)
            rows = rows.iloc[:affordable]
    if len(rows) > done:
        parts.append(explain(rows.iloc[done:]))
    explained = _joined(parts)
    return Explained(rows, explained, explainer.method, time.perf_counter() - started)


def _joined(parts: list[Any]) -> Any:
    """The explanations of consecutive row blocks as one."""
    return parts[0] if len(parts) == 1 else replace(
        parts[0], contributions=np.concatenate([p.contributions for p in parts]))


def ranked(mean_abs: Mapping[str, float]) -> dict[str, float]:
    """Largest first; ties in the input columns' order."""
    return dict(sorted(mean_abs.items(), key=lambda item: -item[1]))


def contributions(explanations: Any, model: Any, frame: pd.DataFrame) -> np.ndarray:
    """(rows, inputs): the one output per row the plots draw: the prediction's (regression, binary log-odds) or
    the predicted class's."""
    return explanations.for_class(model.predict(frame))[1]


def _towards(explanations: Any) -> str:
    if not explanations.classes:
        return "the prediction"
    if explanations.contributions.shape[1] == 1:
        return f"the log-odds of class {explanations.classes[0]}"
    space = "log-odds" if explanations.output == "log_odds" else "probability"
    return f"the predicted class's {space}"


# --- leakage ---------------------------------------------------------------------------------------------------

def find_leaks(mean_abs: Mapping[str, float], single_column: Mapping[str, float], policy: LeakagePolicy,
               family: str = "", skill: str = "score") -> tuple[Leak, ...]:
    """The columns whose attribution share reaches `policy.share`, or whose single-column model reaches
    `policy.single_column` of the full model's `skill`. A model of one input is never flagged: its one column
    explains everything by construction."""
    if len(mean_abs) < 2:
        return ()
    total = sum(mean_abs.values())
    leaks = []
    for column, value in mean_abs.items():
        evidence = []
        if total > 0 and value / total >= policy.share:
            evidence.append(f"{value / total:.0%} of the mean |attribution|, leakage.share {policy.share:.0%}")
        ratio = single_column.get(column)
        if ratio is not None and ratio >= policy.single_column:
            evidence.append(f"a {family} model of {column} alone reaches {ratio:.0%} of the full model's {skill}, "
                            f"leakage.single_column {policy.single_column:.0%}")
        if evidence:
            leaks.append(Leak(column, tuple(evidence)))
    return tuple(leaks)


def single_column_ratios(model: Any, config: EvaluationConfig, family: str, train: pd.DataFrame, x: pd.DataFrame,
                         y: pd.Series, scores: Mapping[str, float], columns: list[str]) -> dict[str, float]:
    """Each column's single-column model's test skill as a share of the full model's; {} when the full model has
    no skill to share (R^2 <= 0, AUC <= 0.5, or undefined on this test set)."""
    full = skill(config.schema.task, scores)
    if full is None or full <= 0:
        log.info("evaluate: no single-column leakage check: the model's %s on the test set is %s",
                 _skill_name(config.schema.task), "undefined" if full is None else f"{full:.4f}")
        return {}
    if len(train) > SINGLE_COLUMN_ROWS:
        train = train.sample(SINGLE_COLUMN_ROWS, random_state=SEED)
    seed = int(getattr(_final_estimator(model), "random_state", None) or SEED)
    ratios = {}
    for column in columns:
        try:
            alone = single_column_model(config, family, column, seed).fit(train[[column]], train[config.schema.target])
        except ValueError as exc:  # e.g. a column with no values to learn from
            log.warning("evaluate: no single-column model of %s: %s", column, exc)
            continue
        score = skill(config.schema.task, _scored(config.schema.task, alone, x[[column]], y))
        ratios[column] = 0.0 if score is None else score / full
    return ratios


def single_column_model(config: EvaluationConfig, family: str, column: str, seed: int) -> Any:
    """The unfitted pipeline of `family` (default hyperparameters, no calibration) that training builds for a
    schema whose only feature is `column`; a forest fits its trees on every core."""
    from include.ml.components.training import build_pipeline

    pipeline = build_pipeline(TrainingConfig(only(config.schema, column), ModelConfig(family=family, random_state=seed),
                                             config.mlflow, MappingProxyType({})))
    if family in FORESTS:  # every core, the same trees
        pipeline.named_steps["model"].set_params(n_jobs=-1)
    return pipeline


def only(schema: SchemaConfig, column: str) -> SchemaConfig:
    """`schema` with every other feature ignored."""
    kept = tuple(c if c.name in (column, schema.target) or c.role != "feature" else c.model_copy(
        update={"role": "ignore"}) for c in schema.columns)
    return schema.model_copy(update={"columns": kept})


def skill(task: str, scores: Mapping[str, float]) -> float | None:
    """R^2 (regression) or ROC AUC above chance, 2 AUC - 1 (classification); None: undefined on these rows."""
    if task == "regression":
        return scores.get("r2")
    auc = scores.get("roc_auc")
    return None if auc is None else 2 * auc - 1


def _skill_name(task: str) -> str:
    return "test R^2" if task == "regression" else "test ROC AUC above chance (2 AUC - 1)"


def _scored(task: str, model: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    from include.ml.metrics import compute_metrics

    return compute_metrics(task, model, x, y)


def _final_estimator(model: Any) -> Any:
    from include.ml.components.training import estimator_of

    return estimator_of(model.named_steps["model"])


# --- the reference profile and the run's artifacts ---------------------------------------------------------------

def reference_profile(sample: Explained, output_dir: Path) -> dict[str, Any]:
    """Mean |attribution| per input column on the explained held-out rows, written to `output_dir`/PROFILE:
    {"columns": {column: value}, "rows": n, "method": ..., "output": ...}. Held-out rather than training rows: a
    fully grown forest reproduces its training targets, noise included, unlike rows it never saw such as live
    traffic."""
    profile = {"columns": {c: float(v) for c, v in sample.explanations.mean_abs().items()},
               "rows": len(sample.frame), "method": sample.method, "output": sample.explanations.output}
    artifacts.write_json(output_dir / PROFILE, profile)
    return profile


def _log(summary: Summary, profile: dict[str, Any], output_dir: Path) -> None:
    """The plots and the summary into `output_dir`/ARTIFACT_DIR, and with the profile onto the active MLflow run
    under ARTIFACT_DIR; the leakage tag on the run."""
    import mlflow

    directory = output_dir / ARTIFACT_DIR
    for title, png in summary.plots.items():
        artifacts.write_bytes(directory / FILES.get(title, "plot.png"), png)
    artifacts.write_json(directory / SUMMARY, {
        "rows": summary.rows, "method": summary.method, "output": summary.output, "towards": summary.towards,
        "mean_abs": dict(summary.mean_abs), "shares": summary.shares, "single_column": dict(summary.single_column),
        "warnings": list(summary.warnings)})
    mlflow.log_artifacts(str(directory), ARTIFACT_DIR)
    mlflow.log_artifact(str(output_dir / PROFILE), ARTIFACT_DIR)
    if summary.leaks:
        mlflow.set_tag(TAG, tag_value(summary.warnings))


def tag_value(warnings: tuple[str, ...]) -> str:
    """The warnings as one MLflow tag value (kept well under the registry's 5000-character limit)."""
    text = " | ".join(warnings)
    return text if len(text) <= 4000 else text[:3997] + "..."
