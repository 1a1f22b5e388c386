"""One tuning trial: its family and hyperparameters, its k-fold cross-validation (pruned or stopped between folds),
and its nested MLflow run, tagged with the worker that ran it. What tuning.py's workers optimise."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from include.ml.components.training import build_pipeline
from include.ml.entities import TrainingConfig, TuningJob
from include.ml.metrics import compute_metrics
from include.ml.models import FAMILIES
from include.ml.params_file import ModelConfig, SearchParam

log = logging.getLogger(__name__)

FOREST_BATCH = 50  # trees a forest grows between two looks at the clock
PRUNED, STOPPED = "pruned", "stopped"  # why a trial ended before its last fold
OVER_BUDGET = "over_budget"  # a trial another worker's trial beat to the last place of the budget: not run


@dataclass(frozen=True)
class TrialSetting:
    """What every trial of one worker shares: the data and folds, where it logs, and who runs it."""

    config: TuningJob
    run_id: str  # the pipeline run
    experiment_id: str
    parent_run_id: str  # the tune stage's MLflow run; each trial is a run nested under it
    worker: int  # the worker's index (0 .. tuning.workers - 1)
    host: str  # the machine and process (or Celery node) running the worker
    x: pd.DataFrame
    y: pd.Series
    folds: list[tuple[np.ndarray, np.ndarray]]


def objective(setting: TrialSetting, budget: int | None, out_of_time: Callable[[], bool],
              stop: Callable[[], None]) -> Callable[[Any], float]:
    """The function a worker's study optimises: a trial's CV mean, or TrialPruned when it was cut short (pruned, or
    stopped at the time budget) or when its number is past the study-wide trial `budget` (`stop` is called then)."""
    import mlflow
    import optuna

    config, configured = setting.config, setting.config.training.model

    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", setting.worker)
        trial.set_user_attr("host", setting.host)
        if budget is not None and trial.number >= budget:  # two workers asked for the last trial: this one is extra
            trial.set_user_attr("cut", OVER_BUDGET)
            stop()
            raise optuna.TrialPruned()
        family = trial.suggest_categorical("family", list(config.spaces))
        if trial.user_attrs.get("configured"):
            searched: dict[str, Any] = {}
            hyperparameters = dict(configured.hyperparameters)
        else:
            searched = {name: suggest(trial, f"{family}.{name}", param)
                        for name, param in config.spaces[family].items()}
            # params.yaml's hyperparameters belong to model.family: they apply when it is tried, under the searched
            hyperparameters = {**dict(FAMILIES[family].search_fixed),
                               **(configured.hyperparameters if family == configured.family else {}), **searched}
        model = ModelConfig(family=family, random_state=configured.random_state, hyperparameters=hyperparameters)
        tags = {"pipeline_run_id": setting.run_id, "pipeline_stage": "tune", "trial": str(trial.number),
                "model_family": family, "tune_worker": str(setting.worker), "tune_host": setting.host,
                "params_yaml_model": str(bool(trial.user_attrs.get("configured"))).lower()}
        with mlflow.start_run(experiment_id=setting.experiment_id, run_name=f"trial-{trial.number}",
                              parent_run_id=setting.parent_run_id, tags=tags):
            mlflow.log_params({"family": family, **{f"model.{k}": v for k, v in hyperparameters.items()}})
            scores, cut = cross_validate(trial, replace(config.training, model=model), config.metric, setting.x,
                                         setting.y, setting.folds, config.tuning.prune_after_folds, out_of_time)
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
        log.info("tune: worker %d: trial %d %s %s: %s %.4f ± %.4f%s", setting.worker, trial.number, family, what,
                 config.metric, mean, std, ending)
        if cut:
            trial.set_user_attr("cut", cut)
            raise optuna.TrialPruned()
        return mean

    return run_trial


def cv_folds(task: str, k: int, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    return (StratifiedKFold if task == "classification" else KFold)(n_splits=k, shuffle=True, random_state=seed)


def suggest(trial: Any, name: str, param: SearchParam) -> Any:
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    if isinstance(param.low, int) and isinstance(param.high, int):
        return trial.suggest_int(name, param.low, param.high, log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.high), log=param.log)  # type: ignore[arg-type]


def cross_validate(trial: Any, config: TrainingConfig, metric: str, x: pd.DataFrame, y: pd.Series,
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
            if not fit_within_budget(model, x.iloc[fit_rows], y.iloc[fit_rows], out_of_time):
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


def fit_within_budget(model: Any, x: pd.DataFrame, y: pd.Series, out_of_time: Callable[[], bool]) -> bool:
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


def log_plots(study: Any, family: str, space: Mapping[str, SearchParam], seed: int, run_id: str) -> None:
    """The optimisation history, and the importance of the best family's searched hyperparameters among its
    completed searched trials (fANOVA needs two of them), into MLflow run `run_id`."""
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
    client = mlflow.MlflowClient()
    for name, figure in figures.items():
        figure.tight_layout()
        client.log_figure(run_id, figure, name)
        plt.close(figure)
