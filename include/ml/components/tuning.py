"""Tuning: an Optuna search over model families and their hyperparameters, scored by k-fold cross-validation on
the training split only (the test split stays unseen until evaluate), every trial a nested MLflow run.

- Trial 0 is params.yaml's model exactly as written (when its family is among those searched), so the best trial
  is never worse in cross-validation than the configured model. The later trials search (a TPE sampler after
  STARTUP_TRIALS random ones); a searched trial gets its family's fixed settings (include/ml/models.py), then
  params.yaml's hyperparameters when it is model.family, then the searched values.
- The budget is tuning.timeout_seconds of wall clock, with tuning.n_trials as a cap. No trial starts once the time
  is spent, and the trial running then stops after its current fold (a forest: after its current batch of
  FOREST_BATCH trees), unscored, so the search overruns its budget by one fold (or batch) at most. The
  exception: while no trial has completed, the running one is never stopped, so a search whose trials fit always
  ends with a result.
- Pruning: after each of its folds from the tuning.prune_after_folds-th on (never on fewer folds, never after the
  last), a trial's running CV mean is compared with the completed trials' running means after as many folds;
  once STARTUP_TRIALS trials have completed, it is pruned when even its best running mean so far is worse than
  their median (Optuna's MedianPruner with n_warmup_steps = prune_after_folds - 1: step s is fold s + 1).
- Same data + same seed = the same trials in the same order: a seeded TPE sampler, one trial at a time, the same
  seeded folds for every trial and seeded estimators. How many trials run depends on the clock, unless only
  n_trials bounds the search.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from include.ml import artifacts, tracking
from include.ml.components.training import build_pipeline, close_abandoned_runs, split_xy
from include.ml.entities import METRICS, ModelConfig, SearchParam, TrainingConfig, TuningJob
from include.ml.exceptions import TuningError
from include.ml.metrics import compute_metrics
from include.ml.models import FAMILIES

log = logging.getLogger(__name__)

RESULT = "result.json"
STARTUP_TRIALS = 5  # random trials before TPE models the results; completed trials before pruning starts
FOREST_BATCH = 50  # trees a forest grows between two looks at the clock
PRUNED, STOPPED = "pruned", "stopped"  # why a trial ended before its last fold


@dataclass(frozen=True)
class TuningResult:
    mlflow_run_id: str
    mlflow_run_url: str  # the parent run; its trials are nested under it
    family: str
    hyperparameters: dict[str, Any]  # everything train passes to the estimator (the YAML's, the search's)
    metric: str
    cv_mean: float
    cv_std: float
    best_trial: int  # 0: params.yaml's model as written
    trials: int
    pruned: int
    failed: int
    train_rows: int
    cv_folds: int
    seconds: float
    stopped: int = 0  # stopped between folds when the time budget was spent

    def summary(self) -> str:
        configured = " (params.yaml's model)" if self.best_trial == 0 else ""
        return (f"best of {self.trials} trials in {self.seconds:.1f}s ({self.pruned} pruned, {self.stopped} stopped "
                f"at the time budget, {self.failed} failed) by {self.cv_folds}-fold CV on {self.train_rows} "
                f"training rows: trial {self.best_trial}{configured}, {self.family} {self.hyperparameters}, "
                f"{self.metric} {self.cv_mean:.4f} ± {self.cv_std:.4f}; MLflow run {self.mlflow_run_id}")

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links mlflow_run_url
        return {"mlflow_run_id": self.mlflow_run_id, "mlflow_run_url": self.mlflow_run_url, "family": self.family,
                "hyperparameters": self.hyperparameters, "metric": self.metric, "cv_mean": self.cv_mean,
                "cv_std": self.cv_std, "best_trial": self.best_trial, "trials": self.trials, "pruned": self.pruned,
                "stopped": self.stopped, "seconds": self.seconds}

    def training_config(self, config: TrainingConfig) -> TrainingConfig:
        """`config` with the best trial's family and hyperparameters: what train fits on the whole split."""
        model = ModelConfig(family=self.family, random_state=config.model.random_state,
                            hyperparameters=self.hyperparameters)
        return replace(config, model=model, tags={**config.tags, "tuning_run_id": self.mlflow_run_id})


def tune(train_frame: pd.DataFrame, config: TuningJob, run_id: str, output_dir: Path) -> TuningResult:
    import mlflow
    import optuna
    from threadpoolctl import threadpool_limits

    training, tuning = config.training, config.tuning
    experiment_id = tracking.configure(training.mlflow)
    close_abandoned_runs(experiment_id, run_id, "tune")
    x, y = split_xy(train_frame, training.schema)
    try:
        folds = list(_folds(training.schema.task, tuning.cv_folds, tuning.seed).split(x, y))
    except ValueError as exc:  # fewer rows (or, for classification, rows of every class) than folds
        raise TuningError(f"cannot split {len(x)} training rows into tuning.cv_folds = {tuning.cv_folds} folds: "
                          f"{exc}") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial from us instead
    study = optuna.create_study(
        direction="maximize" if METRICS[training.schema.task][config.metric] else "minimize",
        sampler=optuna.samplers.TPESampler(seed=tuning.seed, n_startup_trials=STARTUP_TRIALS),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS,
                                           n_warmup_steps=tuning.prune_after_folds - 1))
    configured = training.model
    if configured.family in config.spaces:
        study.enqueue_trial({"family": configured.family}, user_attrs={"configured": True})
    deadline = math.inf  # set when the search starts

    def out_of_time() -> bool:
        """The budget is spent and a trial has completed: the running trial may stop."""
        return time.perf_counter() >= deadline and bool(
            study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", list(config.spaces))
        if trial.user_attrs.get("configured"):
            searched: dict[str, Any] = {}
            hyperparameters = dict(configured.hyperparameters)
        else:
            searched = {name: _suggest(trial, f"{family}.{name}", param)
                        for name, param in config.spaces[family].items()}
            # params.yaml's hyperparameters belong to model.family: they apply when it is tried, under the searched
            hyperparameters = {**dict(FAMILIES[family].search_fixed),
                               **(configured.hyperparameters if family == configured.family else {}), **searched}
        model = ModelConfig(family=family, random_state=configured.random_state, hyperparameters=hyperparameters)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{trial.number}", nested=True):
            mlflow.set_tags({"pipeline_run_id": run_id, "pipeline_stage": "tune", "trial": str(trial.number),
                             "model_family": family, "params_yaml_model": str(bool(trial.user_attrs.get(
                                 "configured"))).lower()})
            mlflow.log_params({"family": family, **{f"model.{k}": v for k, v in hyperparameters.items()}})
            scores, cut = _cross_validate(trial, replace(training, model=model), config.metric, x, y, folds,
                                          tuning.prune_after_folds, out_of_time)
            mean, std = (float(np.mean(scores)), float(np.std(scores))) if scores else (math.nan, math.nan)
            mlflow.log_metrics({**({f"cv_{config.metric}_mean": mean, f"cv_{config.metric}_std": std} if scores
                                   else {}), "cv_folds_scored": len(scores)})
            mlflow.set_tag("trial_state", cut or "complete")
        trial.set_user_attr("family", family)
        trial.set_user_attr("hyperparameters", hyperparameters)
        trial.set_user_attr("cv_std", std)
        what = "(params.yaml's model) " + str(hyperparameters) if trial.user_attrs.get("configured") else searched
        ending = {PRUNED: f" (pruned after {len(scores)} folds)",
                  STOPPED: f" (stopped after {len(scores)} folds: the time budget is spent)"}.get(cut or "", "")
        log.info("tune: trial %d %s %s: %s %.4f ± %.4f%s", trial.number, family, what, config.metric, mean, std,
                 ending)
        if cut:
            trial.set_user_attr("cut", cut)
            raise optuna.TrialPruned()
        return mean

    def stop_when_spent(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if time.perf_counter() >= deadline:
            study.stop()  # no trial starts once the budget is spent

    started = time.perf_counter()
    if tuning.timeout_seconds is not None:
        deadline = started + tuning.timeout_seconds
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune-{run_id}") as parent:
        mlflow.set_tags({**training.tags, "pipeline_run_id": run_id, "pipeline_stage": "tune",
                         "task": training.schema.task})
        mlflow.log_params({"metric": config.metric, "n_trials": tuning.n_trials, "timeout_seconds":
                           tuning.timeout_seconds, "cv_folds": tuning.cv_folds, "prune_after_folds":
                           tuning.prune_after_folds, "seed": tuning.seed, "families": ",".join(config.spaces),
                           "train_rows": len(x)})
        # A configuration the estimator rejects, or one too large for the memory left, fails its trial only (its
        # nested run is marked FAILED; the memory guard passed the family before the search). One OpenMP thread per
        # fit: on a busy machine, gradient boosting's spinning threads made a fold 10-30x slower.
        with threadpool_limits(1, user_api="openmp"):
            study.optimize(objective, n_trials=tuning.n_trials, catch=(ValueError, TypeError, MemoryError),
                           callbacks=[stop_when_spent])
        seconds = time.perf_counter() - started
        states = [t.state for t in study.trials]
        counts = {state: states.count(state) for state in optuna.trial.TrialState}
        stopped = sum(t.user_attrs.get("cut") == STOPPED for t in study.trials)
        if not counts[optuna.trial.TrialState.COMPLETE]:
            raise TuningError(f"no trial of {len(states)} completed ({counts[optuna.trial.TrialState.PRUNED]} pruned, "
                              f"{counts[optuna.trial.TrialState.FAIL]} failed; see the nested runs of MLflow run "
                              f"{parent.info.run_id}): widen the budget (tuning.n_trials, tuning.timeout_seconds) "
                              "or check tuning.search_space")
        best = study.best_trial
        result = TuningResult(
            parent.info.run_id, tracking.run_url(training.mlflow, experiment_id, parent.info.run_id),
            best.user_attrs["family"], best.user_attrs["hyperparameters"], config.metric, float(best.value),
            best.user_attrs["cv_std"], best.number, len(states), counts[optuna.trial.TrialState.PRUNED] - stopped,
            counts[optuna.trial.TrialState.FAIL], len(x), tuning.cv_folds, round(seconds, 3), stopped)
        mlflow.log_params({"best.trial": best.number, "best.family": result.family,
                           **{f"best.model.{k}": v for k, v in result.hyperparameters.items()}})
        mlflow.log_metrics({f"best_cv_{config.metric}_mean": result.cv_mean,
                            f"best_cv_{config.metric}_std": result.cv_std, "trials": result.trials,
                            "trials_pruned": result.pruned, "trials_stopped": result.stopped,
                            "trials_failed": result.failed, "tune_seconds": seconds})
        _log_plots(study, result.family, config.spaces[result.family], tuning.seed)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    log.info("tune: %s", result.summary())
    return result


def _folds(task: str, k: int, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    return (StratifiedKFold if task == "classification" else KFold)(n_splits=k, shuffle=True, random_state=seed)


def _suggest(trial: Any, name: str, param: SearchParam) -> Any:
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    if isinstance(param.low, int) and isinstance(param.high, int):
        return trial.suggest_int(name, param.low, param.high, log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.high), log=param.log)  # type: ignore[arg-type]


def _cross_validate(trial: Any, config: TrainingConfig, metric: str, x: pd.DataFrame, y: pd.Series,
                    folds: list[tuple[np.ndarray, np.ndarray]], prune_after: int,
                    out_of_time: Callable[[], bool]) -> tuple[list[float], str | None]:
    """The metric on each held-out fold, and why the trial ended early if it did: PRUNED (behind the others after
    at least `prune_after` folds) or STOPPED (the time budget is spent)."""
    from sklearn.exceptions import ConvergenceWarning

    scores: list[float] = []
    for step, (fit_rows, scored_rows) in enumerate(folds):
        model = build_pipeline(config)
        with warnings.catch_warnings():
            # An unconverged linear model is a weak trial, scored as such, not an error.
            warnings.simplefilter("ignore", ConvergenceWarning)
            if not _fit(model, x.iloc[fit_rows], y.iloc[fit_rows], out_of_time):
                return scores, STOPPED
        metrics = compute_metrics(config.schema.task, model, x.iloc[scored_rows], y.iloc[scored_rows])
        if metric not in metrics:
            raise ValueError(f"{metric} could not be computed on fold {step}")
        scores.append(metrics[metric])
        trial.report(float(np.mean(scores)), step)
        if len(scores) == len(folds):
            break
        if len(scores) >= prune_after and trial.should_prune():
            return scores, PRUNED
        if out_of_time():
            return scores, STOPPED
    return scores, None


def _fit(model: Any, x: pd.DataFrame, y: pd.Series, out_of_time: Callable[[], bool]) -> bool:
    """Fit the pipeline; False when the time budget ran out first. A forest grows FOREST_BATCH trees at a time
    (warm start: the same trees as one fit) and stops between batches, so a slow fold does not overrun either."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    forest = model.steps[-1][1]
    forests = (ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor)
    if not isinstance(forest, forests) or forest.n_estimators <= FOREST_BATCH:
        model.fit(x, y)
        return True
    features = model[:-1].fit_transform(x, y)  # as Pipeline.fit transforms for its last step
    trees = forest.n_estimators
    for grown in range(FOREST_BATCH, trees + FOREST_BATCH, FOREST_BATCH):
        forest.set_params(n_estimators=min(grown, trees), warm_start=True)
        forest.fit(features, y)
        if grown < trees and out_of_time():
            return False
    forest.set_params(warm_start=False)
    return True


def _log_plots(study: Any, family: str, space: Mapping[str, SearchParam], seed: int) -> None:
    """The optimisation history, and the importance of the best family's searched hyperparameters among its
    completed searched trials (fANOVA needs two of them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures = {"tuning/optimization_history.png": plots.plot_optimization_history(study).figure}
        searched = [f"{family}.{name}" for name in space]
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if searched and sum(set(searched) <= set(t.params) for t in completed) >= 2:
            axes = plots.plot_param_importances(study, optuna.importance.FanovaImportanceEvaluator(seed=seed),
                                                params=searched)
            axes.set_title(f"Hyperparameter importance among the {family} trials")
            figures["tuning/param_importances.png"] = axes.figure
    for name, figure in figures.items():
        figure.tight_layout()
        mlflow.log_figure(figure, name)
        plt.close(figure)
