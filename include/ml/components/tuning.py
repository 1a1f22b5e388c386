"""Tuning: an Optuna search over model families and their hyperparameters, scored by k-fold cross-validation on
the training split only (the test split stays unseen until evaluate), every trial a nested MLflow run.

Same data + same seed = same trials and the same best trial: a seeded TPE sampler, one trial at a time, the same
seeded folds for every trial and seeded estimators. A budget of trials and/or seconds bounds the search (a running
trial finishes); a trial whose running CV mean is worse than the median of earlier trials at the same fold is
pruned.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.ml import artifacts, tracking
from include.ml.components.training import build_pipeline, close_abandoned_runs, split_xy
from include.ml.entities import METRICS, ModelConfig, SearchParam, TrainingConfig, TuningJob
from include.ml.exceptions import TuningError
from include.ml.metrics import compute_metrics

log = logging.getLogger(__name__)

RESULT = "result.json"
STARTUP_TRIALS = 5  # random trials before TPE models the results, and before pruning starts


@dataclass(frozen=True)
class TuningResult:
    mlflow_run_id: str
    mlflow_run_url: str  # the parent run; its trials are nested under it
    family: str
    hyperparameters: dict[str, Any]  # everything train passes to the estimator (the YAML's, the search's)
    metric: str
    cv_mean: float
    cv_std: float
    best_trial: int
    trials: int
    pruned: int
    failed: int
    train_rows: int
    cv_folds: int
    seconds: float

    def summary(self) -> str:
        return (f"best of {self.trials} trials ({self.pruned} pruned, {self.failed} failed) by {self.cv_folds}-fold "
                f"CV on {self.train_rows} training rows: trial {self.best_trial}, {self.family} "
                f"{self.hyperparameters}, {self.metric} {self.cv_mean:.4f} ± {self.cv_std:.4f}; "
                f"MLflow run {self.mlflow_run_id}")

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links mlflow_run_url
        return {"mlflow_run_id": self.mlflow_run_id, "mlflow_run_url": self.mlflow_run_url, "family": self.family,
                "hyperparameters": self.hyperparameters, "metric": self.metric, "cv_mean": self.cv_mean,
                "cv_std": self.cv_std, "best_trial": self.best_trial, "trials": self.trials, "pruned": self.pruned}

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
        pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS))

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", list(config.spaces))
        searched = {name: _suggest(trial, f"{family}.{name}", param) for name, param in config.spaces[family].items()}
        # params.yaml's hyperparameters belong to model.family: they apply when it is tried, under the searched ones
        hyperparameters = {**(training.model.hyperparameters if family == training.model.family else {}), **searched}
        model = ModelConfig(family=family, random_state=training.model.random_state, hyperparameters=hyperparameters)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{trial.number}", nested=True):
            mlflow.set_tags({"pipeline_run_id": run_id, "pipeline_stage": "tune", "trial": str(trial.number),
                             "model_family": family})
            mlflow.log_params({"family": family, **{f"model.{k}": v for k, v in hyperparameters.items()}})
            scores = _cross_validate(trial, replace(training, model=model), config.metric, x, y, folds)
            mean, std = float(np.mean(scores)), float(np.std(scores))
            mlflow.log_metrics({f"cv_{config.metric}_mean": mean, f"cv_{config.metric}_std": std,
                                "cv_folds_scored": len(scores)})
            pruned = len(scores) < len(folds)
            mlflow.set_tag("trial_state", "pruned" if pruned else "complete")
        trial.set_user_attr("hyperparameters", hyperparameters)
        trial.set_user_attr("cv_std", std)
        log.info("tune: trial %d %s %s: %s %.4f ± %.4f%s", trial.number, family, searched, config.metric, mean, std,
                 f" (pruned after {len(scores)} folds)" if pruned else "")
        if pruned:
            raise optuna.TrialPruned()
        return mean

    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune-{run_id}") as parent:
        mlflow.set_tags({**training.tags, "pipeline_run_id": run_id, "pipeline_stage": "tune",
                         "task": training.schema.task})
        mlflow.log_params({"metric": config.metric, "n_trials": tuning.n_trials, "timeout_seconds":
                           tuning.timeout_seconds, "cv_folds": tuning.cv_folds, "seed": tuning.seed,
                           "families": ",".join(config.spaces), "train_rows": len(x)})
        # A configuration the estimator rejects fails its trial only (its nested run is marked FAILED). One OpenMP
        # thread per fit: on a busy machine, gradient boosting's spinning threads made a fold 10-30x slower.
        with threadpool_limits(1, user_api="openmp"):
            study.optimize(objective, n_trials=tuning.n_trials, timeout=tuning.timeout_seconds,
                           catch=(ValueError, TypeError))
        seconds = time.perf_counter() - started
        states = [t.state for t in study.trials]
        counts = {state: states.count(state) for state in optuna.trial.TrialState}
        if not counts[optuna.trial.TrialState.COMPLETE]:
            raise TuningError(f"no trial of {len(states)} completed ({counts[optuna.trial.TrialState.PRUNED]} pruned, "
                              f"{counts[optuna.trial.TrialState.FAIL]} failed; see the nested runs of MLflow run "
                              f"{parent.info.run_id}): widen the budget (tuning.n_trials, tuning.timeout_seconds) "
                              "or check tuning.search_space")
        best = study.best_trial
        result = TuningResult(
            parent.info.run_id, tracking.run_url(training.mlflow, experiment_id, parent.info.run_id),
            best.params["family"], best.user_attrs["hyperparameters"], config.metric, float(best.value),
            best.user_attrs["cv_std"], best.number, len(states), counts[optuna.trial.TrialState.PRUNED],
            counts[optuna.trial.TrialState.FAIL], len(x), tuning.cv_folds, round(seconds, 3))
        mlflow.log_params({"best.trial": best.number, "best.family": result.family,
                           **{f"best.model.{k}": v for k, v in result.hyperparameters.items()}})
        mlflow.log_metrics({f"best_cv_{config.metric}_mean": result.cv_mean,
                            f"best_cv_{config.metric}_std": result.cv_std, "trials": result.trials,
                            "trials_pruned": result.pruned, "trials_failed": result.failed, "tune_seconds": seconds})
        _log_plots(study, tuning.seed)
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
                    folds: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """The metric on each held-out fold, stopping early when the pruner says this trial is behind."""
    from sklearn.exceptions import ConvergenceWarning

    scores: list[float] = []
    for step, (fit_rows, scored_rows) in enumerate(folds):
        model = build_pipeline(config)
        with warnings.catch_warnings():
            # An unconverged linear model is a weak trial, scored as such, not an error.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x.iloc[fit_rows], y.iloc[fit_rows])
        metrics = compute_metrics(config.schema.task, model, x.iloc[scored_rows], y.iloc[scored_rows])
        if metric not in metrics:
            raise ValueError(f"{metric} could not be computed on fold {step}")
        scores.append(metrics[metric])
        trial.report(float(np.mean(scores)), step)
        if trial.should_prune():
            break
    return scores


def _log_plots(study: Any, seed: int) -> None:
    """The optimisation history, and the importance of the best family's hyperparameters among its trials (fANOVA
    needs two of them, completed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures = {"tuning/optimization_history.png": plots.plot_optimization_history(study).figure}
        family = study.best_trial.params["family"]
        searched = [name for name in study.best_trial.params if name != "family"]
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if searched and sum(t.params["family"] == family for t in completed) >= 2:
            axes = plots.plot_param_importances(study, optuna.importance.FanovaImportanceEvaluator(seed=seed),
                                                params=searched)
            axes.set_title(f"Hyperparameter importance among the {family} trials")
            figures["tuning/param_importances.png"] = axes.figure
    for name, figure in figures.items():
        figure.tight_layout()
        mlflow.log_figure(figure, name)
        plt.close(figure)
