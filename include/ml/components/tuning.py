"""Tuning: an Optuna search over model families and their hyperparameters, scored by k-fold cross-validation on
the training split only (the test split stays unseen until evaluate), every trial a nested MLflow run
(include/ml/components/tuning_trials.py).

Three steps share one study, `tune-<run id>`, in the tuning.storage database (default: a SQLite file in the run's
tune folder), so they may run in different processes or on different machines:
1. `open_search`: creates the study (or loads the one an interrupted attempt left), queues params.yaml's model as
   its first trial, opens the parent MLflow run and records the budget and that run in the study.
2. `search_worker(i)`: runs trials against the shared study with its own seeded TPE sampler (seed + i) until the
   study-wide trial budget or the shared deadline is spent. tuning.workers of them may run at once.
3. `collect_search`: the best trial -> TuningResult, result.json, and the parent run's params, metrics and plots.
`tune` is the three in this process (tuning.workers 1), or with N workers, N spawned local processes.

- Trial 0 is params.yaml's model exactly as written (when its family is among those searched), so the best trial
  is never worse in cross-validation than the configured model. The later trials search (a TPE sampler after
  STARTUP_TRIALS random ones); a searched trial gets its family's fixed settings (include/ml/models.py), then
  params.yaml's hyperparameters when it is model.family, then the searched values.
- The budget is tuning.timeout_seconds of wall clock from the first worker's start, with tuning.n_trials as a
  study-wide cap.
  No trial starts once the time is spent, and a trial running then stops after its current fold (a forest: after
  its current batch of FOREST_BATCH trees), unscored. The exception: while no trial has completed, the running
  ones are never stopped, so a search whose trials fit always ends with a result. When two workers start the last
  trial of the budget at once, the later-numbered one is dropped unrun (user attr cut = over_budget, not counted).
- Pruning: after each of its folds from the tuning.prune_after_folds-th on (never on fewer folds, never after the
  last), a trial's running CV mean is compared with the completed trials' running means after as many folds;
  once STARTUP_TRIALS trials have completed, it is pruned when even its best running mean so far is worse than
  their median (Optuna's MedianPruner with n_warmup_steps = prune_after_folds - 1: step s is fold s + 1).
- Same data + same seed = the same trials in the same order with one worker, as each worker's own sequence is with
  N. Parallel TPE is not bit-identical across N: each worker's sampler sees the trials the others finished so far.
"""

from __future__ import annotations

import copyreg
import logging
import math
import multiprocessing
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from include.ml import artifacts, tracking
from include.ml.components.training import close_abandoned_runs, split_xy
from include.ml.components.tuning_storage import open_storage, shown_url, storage_url, study_attrs
from include.ml.components.tuning_trials import OVER_BUDGET, STOPPED, TrialSetting, cv_folds, log_plots, objective
from include.ml.entities import TrainingConfig, TuningJob
from include.ml.exceptions import TuningError
from include.ml.params_file import METRICS, ModelConfig

log = logging.getLogger(__name__)

RESULT = "result.json"
STARTUP_TRIALS = 5  # random trials before TPE models the results; completed trials before pruning starts


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
    workers: int = 1  # the workers that ran trials

    def summary(self) -> str:
        configured = " (params.yaml's model)" if self.best_trial == 0 else ""
        return (f"best of {self.trials} trials in {self.seconds:.1f}s on {self.workers} worker(s) ({self.pruned} "
                f"pruned, {self.stopped} stopped at the time budget, {self.failed} failed) by {self.cv_folds}-fold "
                f"CV on {self.train_rows} training rows: trial {self.best_trial}{configured}, {self.family} "
                f"{self.hyperparameters}, {self.metric} {self.cv_mean:.4f} ± {self.cv_std:.4f}; MLflow run "
                f"{self.mlflow_run_id}")

    def xcom(self) -> dict[str, Any]:  # plugins/mlops_links.py links mlflow_run_url
        return {"mlflow_run_id": self.mlflow_run_id, "mlflow_run_url": self.mlflow_run_url, "family": self.family,
                "hyperparameters": self.hyperparameters, "metric": self.metric, "cv_mean": self.cv_mean,
                "cv_std": self.cv_std, "best_trial": self.best_trial, "trials": self.trials, "pruned": self.pruned,
                "stopped": self.stopped, "seconds": self.seconds, "workers": self.workers}

    def training_config(self, config: TrainingConfig) -> TrainingConfig:
        """`config` with the best trial's family and hyperparameters: what train fits on the whole split."""
        model = ModelConfig(family=self.family, random_state=config.model.random_state,
                            hyperparameters=self.hyperparameters)
        return replace(config, model=model, tags={**config.tags, "tuning_run_id": self.mlflow_run_id})


@dataclass(frozen=True)
class SearchOpened:
    """The study the workers share and the parent MLflow run their trials nest under."""

    study: str
    storage: str  # the database, its password hidden
    mlflow_run_id: str
    mlflow_run_url: str
    workers: int
    n_trials: int | None
    timeout_seconds: float | None
    resumed: bool  # an interrupted attempt's study, with its trials, budget and deadline

    def summary(self) -> str:
        how = "resumed" if self.resumed else "opened"
        return (f"{how} study {self.study} in {self.storage} for {self.workers} worker(s): at most {self.n_trials} "
                f"trials, {self.timeout_seconds} s; MLflow run {self.mlflow_run_id}")

    def xcom(self) -> dict[str, Any]:  # `worker_indices`: what the DAG maps its tune_worker tasks over
        return {"study": self.study, "storage": self.storage, "mlflow_run_id": self.mlflow_run_id,
                "mlflow_run_url": self.mlflow_run_url, "worker_indices": list(range(self.workers)),
                "n_trials": self.n_trials, "resumed": self.resumed}


@dataclass(frozen=True)
class WorkerDone:
    worker: int
    host: str
    trials: int  # this worker ran (complete, pruned, stopped or failed)
    completed: int
    seconds: float

    def summary(self) -> str:
        return f"worker {self.worker} on {self.host} ran {self.trials} trials ({self.completed} completed) in " \
               f"{self.seconds:.1f}s"

    def xcom(self) -> dict[str, Any]:
        return asdict(self)


def study_name(run_id: str) -> str:
    return f"tune-{run_id}"


def open_search(train_frame: pd.DataFrame, config: TuningJob, run_id: str, output_dir: Path) -> SearchOpened:
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Param

    training, tuning = config.training, config.tuning
    experiment_id = tracking.configure(training.mlflow)
    x, y = split_xy(train_frame, training.schema)
    _split(training.schema.task, config, x, y)  # fewer rows than folds fails here, before any worker starts
    output_dir.mkdir(parents=True, exist_ok=True)
    storage, name = open_storage(storage_url(config, output_dir)), study_name(run_id)
    if study_attrs(storage, name).get("collected"):
        optuna.delete_study(study_name=name, storage=storage)  # a finished search of this run: this is a new one
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, direction=(
        "maximize" if METRICS[training.schema.task][config.metric] else "minimize"))
    parent_id = study.user_attrs.get("parent_run_id")
    resumed = parent_id is not None
    if parent_id is None:
        close_abandoned_runs(experiment_id, run_id, "tune")  # an attempt killed before it recorded its run
        client = MlflowClient()
        parent_id = client.create_run(experiment_id, run_name=f"tune-{run_id}", tags={
            **training.tags, "pipeline_run_id": run_id, "pipeline_stage": "tune",
            "task": training.schema.task}).info.run_id
        client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in {
            "metric": config.metric, "n_trials": tuning.n_trials, "timeout_seconds": tuning.timeout_seconds,
            "cv_folds": tuning.cv_folds, "prune_after_folds": tuning.prune_after_folds, "seed": tuning.seed,
            "families": ",".join(config.spaces), "train_rows": len(x), "workers": tuning.workers,
            "study": name, "storage": shown_url(storage.url)}.items()])
        if training.model.family in config.spaces and not study.trials:
            study.enqueue_trial({"family": training.model.family}, user_attrs={"configured": True})
        started = time.time()
        for key, value in {"n_trials": tuning.n_trials, "started": started, "experiment_id": experiment_id,
                           "timeout_seconds": tuning.timeout_seconds,
                           "train_rows": len(x), "parent_run_id": parent_id}.items():
            study.set_user_attr(key, value)  # parent_run_id last: its presence says the study is ready
    opened = SearchOpened(name, shown_url(storage.url), parent_id,
                          tracking.run_url(training.mlflow, experiment_id, parent_id), tuning.workers,
                          study.user_attrs["n_trials"], tuning.timeout_seconds, resumed)
    log.info("tune: %s", opened.summary())
    return opened


def search_worker(train_frame: pd.DataFrame, config: TuningJob, run_id: str, output_dir: Path, worker: int,
                  host: str | None = None) -> WorkerDone:
    """Run trials against the opened study until its budget is spent; `host` names who runs them (default: this
    machine and process)."""
    import optuna
    from threadpoolctl import threadpool_limits

    training = config.training
    host = host or f"{socket.gethostname()}:{os.getpid()}"
    tracking.configure(training.mlflow)
    study = _load(config, run_id, output_dir, worker)
    attrs, began = study.user_attrs, time.perf_counter()
    _abandon_stale_trials(study, run_id, attrs["experiment_id"], worker)
    x, y = split_xy(train_frame, training.schema)
    setting = TrialSetting(config, run_id, attrs["experiment_id"], attrs["parent_run_id"], worker, host, x, y,
                           _split(training.schema.task, config, x, y))
    budget, deadline = attrs["n_trials"], _deadline(study)
    completed = False  # once a trial of the study has completed, it stays so

    def out_of_time() -> bool:
        """The time is spent and a trial has completed: no trial starts, the running one may stop."""
        nonlocal completed
        if time.time() < deadline:
            return False
        completed = completed or bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        return completed

    def spent() -> bool:
        return out_of_time() or (budget is not None and len(study.get_trials(deepcopy=False)) >= budget)

    def stop_when_spent(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if time.time() >= deadline or spent():
            study.stop()

    before = {t.number for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING}
    if not spent():
        # A configuration the estimator rejects, or one too large for the memory left, fails its trial only (its
        # nested run is marked FAILED; the memory guard passed the family before the search). One OpenMP thread
        # per fit: on a busy machine, gradient boosting's spinning threads made a fold 10-30x slower.
        with threadpool_limits(1, user_api="openmp"):
            study.optimize(objective(setting, budget, out_of_time, study.stop), n_trials=None,
                           catch=(ValueError, TypeError, MemoryError), callbacks=[stop_when_spent])
    mine = [t for t in study.get_trials(deepcopy=False) if t.number not in before
            and t.user_attrs.get("worker") == worker and t.user_attrs.get("cut") != OVER_BUDGET]
    done = WorkerDone(worker, host, len(mine), sum(t.state == optuna.trial.TrialState.COMPLETE for t in mine),
                      round(time.perf_counter() - began, 3))
    log.info("tune: %s", done.summary())
    return done


def collect_search(config: TuningJob, run_id: str, output_dir: Path) -> TuningResult:
    import mlflow
    import optuna

    training, tuning = config.training, config.tuning
    tracking.configure(training.mlflow)
    study = _load(config, run_id, output_dir)
    attrs, client = study.user_attrs, mlflow.MlflowClient()
    parent_id, experiment_id = attrs["parent_run_id"], attrs["experiment_id"]
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("cut") != OVER_BUDGET]
    states = [t.state for t in trials]
    counts = {state: states.count(state) for state in optuna.trial.TrialState}
    stopped = sum(t.user_attrs.get("cut") == STOPPED for t in trials)
    if not counts[optuna.trial.TrialState.COMPLETE]:
        client.set_terminated(parent_id, status="FAILED")
        study.set_user_attr("collected", True)  # over: a new attempt searches afresh
        raise TuningError(f"no trial of {len(states)} completed ({counts[optuna.trial.TrialState.PRUNED]} pruned, "
                          f"{counts[optuna.trial.TrialState.FAIL]} failed; see the nested runs of MLflow run "
                          f"{parent_id}): widen the budget (tuning.n_trials, tuning.timeout_seconds) "
                          "or check tuning.search_space")
    best, seconds = study.best_trial, time.time() - attrs["started"]
    result = TuningResult(
        parent_id, tracking.run_url(training.mlflow, experiment_id, parent_id), best.user_attrs["family"],
        best.user_attrs["hyperparameters"], config.metric, float(best.value), best.user_attrs["cv_std"], best.number,
        len(states), counts[optuna.trial.TrialState.PRUNED] - stopped, counts[optuna.trial.TrialState.FAIL],
        attrs["train_rows"], tuning.cv_folds, round(seconds, 3), stopped,
        len({t.user_attrs.get("worker") for t in trials}))
    with mlflow.start_run(run_id=parent_id):  # FINISHED on leaving
        mlflow.log_params({"best.trial": best.number, "best.family": result.family,
                           **{f"best.model.{k}": v for k, v in result.hyperparameters.items()}})
        mlflow.log_metrics({f"best_cv_{config.metric}_mean": result.cv_mean,
                            f"best_cv_{config.metric}_std": result.cv_std, "trials": result.trials,
                            "trials_pruned": result.pruned, "trials_stopped": result.stopped,
                            "trials_failed": result.failed, "tune_seconds": seconds, "tune_workers": result.workers})
        log_plots(study, result.family, config.spaces[result.family], tuning.seed, parent_id)
    artifacts.write_json(output_dir / RESULT, asdict(result))
    study.set_user_attr("collected", True)
    log.info("tune: %s", result.summary())
    return result


def tune(train_frame: pd.DataFrame, config: TuningJob, run_id: str, output_dir: Path) -> TuningResult:
    """The whole search here: open, tuning.workers workers (one: in this process; more: spawned local processes,
    each reading the training split from `train_path`), collect."""
    open_search(train_frame, config, run_id, output_dir)
    if config.tuning.workers == 1:
        search_worker(train_frame, config, run_id, output_dir, 0)
    else:
        run_local_workers(train_frame, config, run_id, output_dir)
    return collect_search(config, run_id, output_dir)


def run_local_workers(train_frame: pd.DataFrame, config: TuningJob, run_id: str, output_dir: Path) -> None:
    """tuning.workers spawned processes on this machine, one worker each, sharing the study (a SQLite file needs
    no server for that: its locks serialise the writes)."""
    frame = output_dir / "train.parquet"  # what the processes read (the frame may not come from a file)
    train_frame.to_parquet(frame)
    copyreg.pickle(MappingProxyType, _pickled_read_only)  # the frozen config's mappings, sent to the processes
    context = multiprocessing.get_context("spawn")  # no fork of a process holding MLflow's and Optuna's threads
    processes = [context.Process(target=_local_worker, args=(frame, config, run_id, output_dir, worker),
                                 name=f"tune-worker-{worker}") for worker in range(config.tuning.workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    frame.unlink(missing_ok=True)
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise TuningError(f"tuning worker process(es) {', '.join(failed)} failed (their log is above)")


def _pickled_read_only(mapping: MappingProxyType) -> tuple[Any, tuple[dict[str, Any]]]:
    return _read_only, (dict(mapping),)


def _read_only(mapping: dict[str, Any]) -> MappingProxyType:
    return MappingProxyType(mapping)


def _local_worker(frame: Path, config: TuningJob, run_id: str, output_dir: Path, worker: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {worker} %(message)s")
    search_worker(pd.read_parquet(frame), config, run_id, output_dir, worker)


# --- the study ----------------------------------------------------------------------------------------------------

def _load(config: TuningJob, run_id: str, output_dir: Path, worker: int = 0) -> Any:
    """The opened study, with worker `worker`'s sampler (seed + worker) and the shared pruner settings."""
    import optuna

    tuning, name = config.tuning, study_name(run_id)
    try:
        study = optuna.load_study(
            study_name=name, storage=open_storage(storage_url(config, output_dir)),
            sampler=optuna.samplers.TPESampler(seed=tuning.seed + worker, n_startup_trials=STARTUP_TRIALS),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS,
                                               n_warmup_steps=tuning.prune_after_folds - 1))
    except KeyError:
        study = None
    if study is None or "parent_run_id" not in study.user_attrs:
        raise TuningError(f"no opened study {name} in {shown_url(storage_url(config, output_dir))}: the tune step "
                          "(open_search) runs first")
    return study


def _deadline(study: Any) -> float:
    """When no trial may start any more: set by the first worker to start, timeout_seconds after that."""
    timeout = study.user_attrs["timeout_seconds"]
    if timeout is None:
        return math.inf
    if study.user_attrs.get("deadline") is None:
        study.set_user_attr("deadline", time.time() + timeout)
    return float(study.user_attrs["deadline"])  # workers starting at once: within moments of each other


def _abandon_stale_trials(study: Any, run_id: str, experiment_id: str, worker: int) -> None:
    """An earlier, killed attempt of this worker left its trial RUNNING in the study and in MLflow: both FAILED."""
    import optuna
    from mlflow import MlflowClient

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker:
            log.warning("tune: marking trial %d of an earlier, interrupted attempt of worker %d as FAILED",
                        trial.number, worker)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    client = MlflowClient()
    for stale in client.search_runs([experiment_id], f"tags.pipeline_run_id = '{run_id}' and tags.pipeline_stage = "
                                    f"'tune' and tags.tune_worker = '{worker}' and attributes.status = 'RUNNING'"):
        client.set_terminated(stale.info.run_id, status="FAILED")


def _split(task: str, config: TuningJob, x: pd.DataFrame, y: pd.Series) -> list[Any]:
    tuning = config.tuning
    try:
        return list(cv_folds(task, tuning.cv_folds, tuning.seed).split(x, y))
    except ValueError as exc:  # fewer rows (or, for classification, rows of every class) than folds
        raise TuningError(f"cannot split {len(x)} training rows into tuning.cv_folds = {tuning.cv_folds} folds: "
                          f"{exc}") from exc
