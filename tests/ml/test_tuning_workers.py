"""The tune stage as three steps sharing one Optuna study (open, workers, collect): one worker repeats the
single-process search exactly; two worker processes share one SQLite study and its trial budget; a retried step
resumes or starts afresh as it should; tuning.workers and tuning.storage fail at load time naming file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from include.ml.components import tuning, tuning_storage
from include.ml.config_file import MlflowConfig
from include.ml.configuration import ConfigurationManager
from include.ml.exceptions import ConfigError, TuningError
from tests.support.frames import dataset, tuning_config

SMALL = {"extra_trees": {"n_estimators": {"low": 3, "high": 8}, "min_samples_leaf": {"low": 1, "high": 6}},
         "elasticnet": {"alpha": {"low": 1e-3, "high": 1.0, "log": True}}}
# The search SMALL made with the single-process, in-memory study tune() ran before the study was shared
# (recorded from commit fa151b0, 9 trials, seed 0): trial number -> family, its hyperparameters, its CV RMSE.
RECORDED = [
    ("extra_trees", {"n_estimators": "5"}, 0.8331565317796674),
    ("elasticnet", {"alpha": "0.06431172050131989"}, 0.47135398881352875),
    ("extra_trees", {"n_jobs": "-1", "max_leaf_nodes": "4096", "n_estimators": "6", "min_samples_leaf": "3"},
     0.9933129495741553),
    ("elasticnet", {"alpha": "0.014135935551752304"}, 0.44479087127569916),
    ("extra_trees", {"n_jobs": "-1", "max_leaf_nodes": "4096", "n_estimators": "6", "min_samples_leaf": "6"},
     1.149859145848347),
    ("elasticnet", {"alpha": "0.001330724978831817"}, 0.4420118255572379),  # TPE from here on
    ("elasticnet", {"alpha": "0.0011485172688183688"}, 0.4419860326893761),
]


@pytest.fixture(scope="module")
def mlflow_config(tmp_path_factory: pytest.TempPathFactory) -> MlflowConfig:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_location=(root / "artifacts").as_uri(),
                        experiment_name="workers", registered_model_name="unit-model")


def nested_runs(result: Any) -> list[Any]:
    import mlflow

    return mlflow.search_runs(experiment_names=["workers"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")


def test_one_worker_repeats_the_single_process_search(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    """The same trials in the same order, and the same best, as the in-memory study of before (random trials,
    then TPE), now through a SQLite study in the tune folder."""
    result = tuning.tune(dataset("regression"), tuning_config("regression", mlflow_config, SMALL, n_trials=7), "r",
                         tmp_path)
    runs = sorted(nested_runs(result), key=lambda run: int(run.data.tags["trial"]))
    made = [(run.data.params["family"], {k.removeprefix("model."): v for k, v in run.data.params.items()
                                         if k.startswith("model.")}) for run in runs]
    assert made == [(family, params) for family, params, _ in RECORDED]
    assert [run.data.metrics["cv_rmse_mean"] for run in runs] == pytest.approx([rmse for *_, rmse in RECORDED])
    assert (result.best_trial, result.family, result.trials, result.workers) == (6, "elasticnet", 7, 1)
    assert {run.data.tags["tune_worker"] for run in runs} == {"0"}
    assert (tmp_path / tuning_storage.STUDY_DB).is_file()


def test_two_worker_processes_share_one_study_and_its_budget(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    """tuning.workers 2 in one process's tune(): two spawned processes, one SQLite study. Both ran trials, the
    trials run are exactly the budget, and one best comes out of all of them."""
    import optuna

    spaces = {"elasticnet": SMALL["elasticnet"], "extra_trees": {"n_estimators": {"low": 20, "high": 60}}}
    config = tuning_config("regression", mlflow_config, spaces, n_trials=16, workers=2)
    result = tuning.tune(dataset("regression", rows=400), config, "r", tmp_path)

    runs = nested_runs(result)
    by_worker = {worker: [run for run in runs if run.data.tags["tune_worker"] == worker] for worker in ("0", "1")}
    assert all(by_worker.values()), {worker: len(found) for worker, found in by_worker.items()}
    assert len(runs) == result.trials == 16 and result.workers == 2
    assert len({run.data.tags["tune_host"] for run in runs}) == 2  # two processes
    assert sorted(int(run.data.tags["trial"]) for run in runs) == list(range(16))  # each trial once
    storage = f"sqlite:///{tmp_path / tuning_storage.STUDY_DB}"
    assert optuna.get_all_study_names(storage) == ["tune-r"]
    study = optuna.load_study(study_name="tune-r", storage=storage)
    counted = [t for t in study.trials if t.user_attrs.get("cut") != "over_budget"]
    assert len(counted) == 16 and {t.user_attrs["worker"] for t in counted} == {0, 1}
    best = min((run for run in runs if "cv_rmse_mean" in run.data.metrics),
               key=lambda run: run.data.metrics["cv_rmse_mean"])
    assert (int(best.data.tags["trial"]), result.cv_mean) == (result.best_trial, best.data.metrics["cv_rmse_mean"])
    assert not (tmp_path / "train.parquet").exists()


def test_a_retried_step_resumes_and_a_new_search_starts_afresh(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    """open again before collect (a retry) keeps the study, its parent run and its queued trial; a killed worker's
    RUNNING trial is failed by that worker's retry; open after collect starts a new search in a new run."""
    import mlflow
    import optuna

    frame, config = dataset("regression"), tuning_config("regression", mlflow_config, SMALL, n_trials=2)
    first = tuning.open_search(frame, config, "r", tmp_path)
    again = tuning.open_search(frame, config, "r", tmp_path)
    assert (again.resumed, again.mlflow_run_id) == (True, first.mlflow_run_id) and not first.resumed
    study = optuna.load_study(study_name="tune-r", storage=f"sqlite:///{tmp_path / tuning_storage.STUDY_DB}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING]  # params.yaml's model, once
    killed = study.ask()  # what a killed attempt of worker 1 left behind: trial 0 (params.yaml's model) RUNNING
    killed.set_user_attr("worker", 1)

    done = tuning.search_worker(frame, config, "r", tmp_path, 1, host="worker-1@box")
    assert (done.worker, done.host, done.trials) == (1, "worker-1@box", 1)  # the budget: the killed one, and one
    assert study.trials[killed.number].state == optuna.trial.TrialState.FAIL
    collected = tuning.collect_search(config, "r", tmp_path)
    assert (collected.trials, collected.failed, collected.mlflow_run_id) == (2, 1, first.mlflow_run_id)
    assert mlflow.get_run(first.mlflow_run_id).info.status == "FINISHED"

    fresh = tuning.open_search(frame, config, "r", tmp_path)
    assert not fresh.resumed and fresh.mlflow_run_id != first.mlflow_run_id


def test_a_worker_before_the_study_is_opened_is_an_error(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    config = tuning_config("regression", mlflow_config, SMALL)
    with pytest.raises(TuningError, match=r"no opened study tune-r in sqlite:///.*: the tune step"):
        tuning.search_worker(dataset("regression"), config, "r", tmp_path, 0)


# --- tuning.workers and tuning.storage ----------------------------------------------------------------------------

def test_workers_and_storage_overrides(config_dir: Path) -> None:
    cm = ConfigurationManager(config_dir, env={"MLOPS_TUNING_STORAGE": "sqlite:///outputs/study.db"}, tune_workers=3)
    assert (cm.config.tuning.workers, cm.config.tuning.storage) == (3, f"sqlite:///{cm.config.project_root}/"
                                                                       "outputs/study.db")
    default = ConfigurationManager(config_dir, env={}).config.tuning
    assert (default.workers, default.storage) == (1, None)
    with pytest.raises(ConfigError) as caught:
        ConfigurationManager(config_dir, env={"MLOPS_TUNING_STORAGE": "redis://:pw@127.0.0.1/0"})
    assert caught.value.key == "tuning.storage" and "(from MLOPS_TUNING_STORAGE)" in str(caught.value)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"workers": 0}, "tuning.workers", "expected at least 1"),
    ({"workers": "2"}, "tuning.workers", "expected int"),
    ({"storage": "optuna.db"}, "tuning.storage", "expected a SQLAlchemy database URL of sqlite, postgresql, mysql"),
    ({"storage": "mongodb://host/optuna"}, "tuning.storage", "got scheme 'mongodb'"),
])
def test_a_bad_workers_or_storage_names_file_and_key(config_dir: Path, edit_yaml, change: dict, key: str,
                                                      words: str) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["tuning"].update(change))
    with pytest.raises(ConfigError) as caught:
        ConfigurationManager(config_dir, env={})
    assert caught.value.file.endswith("params.yaml") and caught.value.key == key, caught.value
    assert words in str(caught.value)


@pytest.mark.parametrize("storage", ["sqlite:///relative.db", "postgresql://u@h/optuna",
                                     "postgresql+psycopg2://u@h/optuna", "mysql+pymysql://u@h/optuna"])
def test_storage_schemes_accepted(config_dir: Path, edit_yaml, storage: str) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["tuning"].update(storage=storage))
    assert ConfigurationManager(config_dir, env={}).config.tuning.storage.endswith(storage.split("/")[-1])
