"""The tune stage: a seeded, budgeted Optuna search on the training split only, every trial a nested MLflow run,
and train fitting its best configuration; its `tuning:` section fails at load time naming file and key."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from include import pipeline
from include.ml import artifacts
from include.ml.components.tuning import tune
from include.ml.config_file import MlflowConfig
from include.ml.configuration import ConfigurationManager
from include.ml.exceptions import ConfigError, TuningError
from include.ml.models import FAMILIES
from include.ml.params_file import SearchParam
from tests.support.frames import dataset, training_config, tuning_config
from tests.support.project import CONFIG_DIR, WINE_CSV, edit_yaml, outputs_env

TREES = {"extra_trees": {"n_estimators": {"low": 3, "high": 8}, "min_samples_leaf": {"low": 1, "high": 6}}}
SMALL = {**TREES, "elasticnet": {"alpha": {"low": 1e-3, "high": 1.0, "log": True}}}


@pytest.fixture(scope="module")
def mlflow_config(tmp_path_factory: pytest.TempPathFactory) -> MlflowConfig:
    """One real MLflow store for the component tests below (creating one takes seconds); each run is found by id."""
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_location=(root / "artifacts").as_uri(),
                        experiment_name="unit", registered_model_name="unit-model")


def test_same_data_and_seed_pick_the_same_trial(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    config = tuning_config("regression", mlflow_config, SMALL, n_trials=4)
    first, second = (tune(dataset("regression"), config, "r", tmp_path / name) for name in ("one", "two"))
    assert first.mlflow_run_id != second.mlflow_run_id
    picked = ("best_trial", "family", "hyperparameters", "cv_mean", "cv_std", "trials")
    assert [getattr(first, f) for f in picked] == [getattr(second, f) for f in picked]
    assert first.trials == 4 and first.train_rows == 120 and first.family in SMALL
    assert artifacts.read_json(tmp_path / "one" / "result.json")["hyperparameters"] == first.hyperparameters


def nested_runs(result: Any) -> dict[int, Any]:
    """The trials' nested MLflow runs of a search, by trial number."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=["unit"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    return {int(run.data.tags["trial"]): run for run in runs}


def test_every_trial_is_a_nested_run_and_the_parent_logs_the_best(mlflow_config: MlflowConfig,
                                                                  tmp_path: Path) -> None:
    import mlflow

    result = tune(dataset("regression"), tuning_config("regression", mlflow_config, TREES), "run-7", tmp_path)
    trials = list(nested_runs(result).values())
    assert len(trials) == result.trials == 3
    for trial in trials:
        assert trial.data.tags["pipeline_run_id"] == "run-7" and trial.data.params["family"] == "extra_trees"
        assert {"cv_rmse_mean", "cv_rmse_std"} <= set(trial.data.metrics)
        assert "model.n_estimators" in trial.data.params
    best = next(t for t in trials if t.data.tags["trial"] == str(result.best_trial))
    assert best.data.metrics["cv_rmse_mean"] == pytest.approx(result.cv_mean)
    assert min(t.data.metrics["cv_rmse_mean"] for t in trials) == pytest.approx(result.cv_mean)  # lower is better

    parent = mlflow.get_run(result.mlflow_run_id)
    assert parent.data.params["best.family"] == "extra_trees"
    assert parent.data.params["best.model.n_estimators"] == str(result.hyperparameters["n_estimators"])
    assert parent.data.metrics["best_cv_rmse_mean"] == pytest.approx(result.cv_mean)
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(result.mlflow_run_id, "tuning")}
    assert plots == {"tuning/optimization_history.png", "tuning/param_importances.png"}


def test_trial_0_is_the_configured_model_as_written(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    """params.yaml's model, hyperparameters outside the search space included, is trial 0, so the search never ends
    worse in cross-validation than it; the searched trials get those hyperparameters under the searched ones."""
    configured = {"n_estimators": 40, "max_features": 0.5}
    stumps = {"extra_trees": {"n_estimators": {"choices": [2]}, "max_depth": {"choices": [1]}}}  # all worse
    result = tune(dataset("regression"), tuning_config("regression", mlflow_config, stumps,
                                                       hyperparameters=configured, n_trials=4), "r", tmp_path)
    trials = nested_runs(result)
    params = {n: {k: v for k, v in run.data.params.items() if k.startswith("model.")} for n, run in trials.items()}
    assert params[0] == {"model.n_estimators": "40", "model.max_features": "0.5"}
    assert trials[0].data.tags["params_yaml_model"] == "true"
    for number in (1, 2, 3):  # searched: the family's n_jobs, then params.yaml's, then the searched values
        assert params[number] == {"model.n_estimators": "2", "model.max_depth": "1", "model.max_features": "0.5",
                                  "model.n_jobs": "-1", "model.max_leaf_nodes": "4096"}
        assert trials[number].data.tags["params_yaml_model"] == "false"
    assert (result.best_trial, result.hyperparameters) == (0, configured)
    assert "trial 0 (params.yaml's model), extra_trees" in result.summary()


def test_no_trial_0_when_the_search_leaves_out_model_family(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    result = tune(dataset("regression"), tuning_config("regression", mlflow_config, TREES, family="elasticnet",
                                                       n_trials=2), "r", tmp_path)
    assert {run.data.params["family"] for run in nested_runs(result).values()} == {"extra_trees"}
    assert result.family == "extra_trees"


def test_searched_trials_get_their_family_fixed_settings(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    """Forests fit on every core; gradient boosting stops early, so its learning rate x iterations is searched."""
    spaces = {"random_forest": {"n_estimators": {"choices": [3]}},
              "hist_gradient_boosting": {"learning_rate": {"low": 0.05, "high": 0.3, "log": True},
                                         "max_iter": {"low": 20, "high": 200, "log": True}}}
    result = tune(dataset("regression"), tuning_config("regression", mlflow_config, spaces, family="elasticnet",
                                                       n_trials=6), "r", tmp_path)
    by_family: dict[str, list[dict[str, str]]] = {}
    for run in nested_runs(result).values():
        by_family.setdefault(run.data.params["family"], []).append(run.data.params)
    assert set(by_family) == set(spaces)
    assert all(params["model.n_jobs"] == "-1" for params in by_family["random_forest"])
    assert all(params["model.early_stopping"] == "True" for params in by_family["hist_gradient_boosting"])


def test_default_search_spaces_reach_the_strong_settings() -> None:
    """Many trees and small leaves for the forests (500 extra trees of unlimited depth beat a 200-tree forest on
    the shipped wine split); learning rate x iterations, early stopped, for gradient boosting."""
    for name in ("random_forest", "extra_trees"):
        space = FAMILIES[name].search_space
        assert space["n_estimators"]["high"] >= 500 and space["min_samples_leaf"]["low"] == 1, name
        assert "max_depth" not in space, name  # unlimited, as fully grown trees are the strong ones here
        assert dict(FAMILIES[name].search_fixed) == {"n_jobs": -1, "max_leaf_nodes": 4096}, name
    boosting = FAMILIES["hist_gradient_boosting"]
    assert {"learning_rate", "max_iter"} <= set(boosting.search_space)
    assert boosting.search_space["max_iter"]["high"] >= 1000
    assert dict(boosting.search_fixed) == {"early_stopping": True}


@pytest.mark.parametrize("prune_after", [2, 4])
def test_a_trial_is_judged_only_after_prune_after_folds(mlflow_config: MlflowConfig, tmp_path: Path,
                                                         prune_after: int) -> None:
    """Weak elastic nets (a large alpha predicts about the mean) fall behind the median: pruned, but never before
    `prune_after_folds` folds are scored; equal to cv_folds, never."""
    spaces = {"elasticnet": {"alpha": {"low": 1e-3, "high": 100.0, "log": True}}}
    config = tuning_config("regression", mlflow_config, spaces, n_trials=20, cv_folds=4,
                           prune_after_folds=prune_after)
    result = tune(dataset("regression"), config, "r", tmp_path)
    trials = nested_runs(result).values()
    scored = sorted(int(t.data.metrics["cv_folds_scored"]) for t in trials if t.data.tags["trial_state"] == "pruned")
    assert len(scored) == result.pruned
    if prune_after == 4:
        assert result.pruned == 0
    else:
        assert result.pruned >= 1 and scored[0] >= prune_after, scored
    assert result.stopped == 0


def test_the_trial_running_when_the_budget_is_spent_stops_between_folds(mlflow_config: MlflowConfig,
                                                                        tmp_path: Path) -> None:
    """Trial 0 (10 boosting rounds) completes within the budget; trial 1 (10 folds of 500 rounds, not stopped
    early) is running at the deadline: it stops after its current fold, not after all ten, and no trial starts
    after it."""
    slow = {"hist_gradient_boosting": {"max_iter": {"choices": [500]}, "max_leaf_nodes": {"choices": [63]},
                                       "early_stopping": {"choices": [False]}}}
    config = tuning_config("regression", mlflow_config, slow, n_trials=100, cv_folds=10, timeout_seconds=3.0)
    result = tune(dataset("regression", rows=4000), config, "r", tmp_path)
    trials = nested_runs(result)
    assert (result.trials, result.stopped, result.pruned, result.best_trial) == (2, 1, 0, 0)
    assert trials[1].data.tags["trial_state"] == "stopped"
    assert 1 <= trials[1].data.metrics["cv_folds_scored"] < 10
    assert "1 stopped at the time budget" in result.summary()


def test_a_forest_running_when_the_budget_is_spent_stops_between_batches_of_trees(mlflow_config: MlflowConfig,
                                                                                  tmp_path: Path) -> None:
    """A forest grows 50 trees at a time and looks at the clock in between: trial 1 (20,000 trees a fold, far more
    than fit in the budget on any machine) stops within its first fold."""
    slow = {"extra_trees": {"n_estimators": {"choices": [20_000]}}}
    config = tuning_config("regression", mlflow_config, slow, n_trials=100, timeout_seconds=3.0)
    result = tune(dataset("regression", rows=4000), config, "r", tmp_path)
    trials = nested_runs(result)
    assert (result.trials, result.stopped, result.best_trial) == (2, 1, 0)
    assert trials[1].data.metrics["cv_folds_scored"] == 0 and trials[1].data.tags["trial_state"] == "stopped"


def test_a_forest_grown_in_batches_is_the_forest_fitted_at_once(mlflow_config: MlflowConfig) -> None:
    from include.ml.components.training import build_pipeline, split_xy
    from include.ml.components.tuning_trials import fit_within_budget as _fit

    config = training_config("classification", "random_forest", mlflow_config, n_estimators=120)
    x, y = split_xy(dataset("classification"), config.schema)
    at_once, batched = build_pipeline(config).fit(x, y), build_pipeline(config)
    assert _fit(batched, x, y, out_of_time=lambda: False)
    forest = batched.named_steps["model"]
    assert len(forest.estimators_) == 120 and forest.get_params()["warm_start"] is False
    for one, other in zip(at_once.named_steps["model"].estimators_, forest.estimators_):
        assert (one.tree_.threshold == other.tree_.threshold).all()
    assert (at_once.predict(x) == batched.predict(x)).all()


def test_the_first_trial_completes_however_small_the_budget(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    """With no complete trial yet, the one running at the deadline is not stopped: the search has a result."""
    config = tuning_config("regression", mlflow_config, TREES, hyperparameters={"n_estimators": 200}, n_trials=100,
                           cv_folds=5, timeout_seconds=0.01)
    result = tune(dataset("regression", rows=2000), config, "r", tmp_path)
    assert (result.trials, result.stopped, result.best_trial) == (1, 0, 0)
    assert nested_runs(result)[0].data.metrics["cv_folds_scored"] == 5


def test_the_timeout_stops_the_search(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    config = tuning_config("regression", mlflow_config, TREES, n_trials=10_000, timeout_seconds=2.0)
    started = time.monotonic()
    result = tune(dataset("regression"), config, "r", tmp_path)
    assert time.monotonic() - started < 20  # the budget plus a fold running at the deadline, on a busy machine
    assert 1 <= result.trials < 10_000


def test_classification_is_scored_on_stratified_folds(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    result = tune(dataset("classification"), tuning_config("classification", mlflow_config, TREES, n_trials=2),
                  "r", tmp_path)
    assert result.metric == "f1_macro" and 0 < result.cv_mean <= 1


def test_no_completed_trial_is_an_error_and_writes_nothing(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    broken = {"hist_gradient_boosting": {"learning_rate": {"choices": [-1.0]}}}  # the estimator refuses it
    with pytest.raises(TuningError, match=r"no trial of 2 completed \(0 pruned, 2 failed"):
        tune(dataset("regression"), tuning_config("regression", mlflow_config, broken, family="elasticnet",
                                                  n_trials=2), "r", tmp_path)
    assert not (tmp_path / "result.json").exists()


def test_more_folds_than_rows_is_an_error(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    with pytest.raises(TuningError, match="cannot split 4 training rows into tuning.cv_folds = 5 folds"):
        tune(dataset("regression", rows=4), tuning_config("regression", mlflow_config, TREES, cv_folds=5), "r",
             tmp_path)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_default_search_spaces_name_parameters_of_their_estimators(task: str) -> None:
    for name, family in FAMILIES.items():
        space = family.default_search_space(task)
        assert space, name
        assert set(space) <= set(family.estimator_class(task)().get_params()), name
        for spec in space.values():
            SearchParam.model_validate(spec)


# --- the stage in the pipeline: on a prepared run of a wine sample whose test split is gone ---------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """ingest, validate, transform on 200 wines with a tiny search configured; then the test split is deleted, so
    the stages below cannot have read it."""
    root = tmp_path_factory.mktemp("tune")
    config_dir = root / "config"
    shutil.copytree(CONFIG_DIR, config_dir)
    pd.read_csv(WINE_CSV, sep=";").head(200).to_csv(root / "wine.csv", sep=";", index=False)

    def tiny(params: dict[str, Any]) -> None:  # a random forest configured, extra trees searched
        params["model"] = {"family": "random_forest", "random_state": 42, "hyperparameters": {"n_estimators": 10}}
        params["tuning"].update(n_trials=3, cv_folds=2, families=["extra_trees"], search_space=TREES)
    edit_yaml(config_dir / "params.yaml", tiny)
    env = {**outputs_env(root / "outputs"), "MLOPS_SOURCE_URI": str(root / "wine.csv")}
    pipeline.run(ConfigurationManager(config_dir, env=env), "r1", ("ingest", "validate", "transform"))
    split = artifacts.read_json(root / "outputs" / "artifacts" / "r1" / "transform" / "result.json")
    Path(split["test_path"]).unlink()
    return config_dir, env, "r1"


def test_train_fits_the_tuned_configuration_never_seeing_the_test_split(prepared: tuple) -> None:
    import mlflow

    config_dir, env, run_id = prepared
    cm = ConfigurationManager(config_dir, env=env)
    tuned = pipeline.run_tune(cm, run_id)
    assert tuned.train_rows == 160 and tuned.family == "extra_trees"  # the 80% training split, nothing more
    trained = pipeline.run_train(cm, run_id)
    assert trained.family == "extra_trees" and trained.train_rows == 160
    run = mlflow.get_run(trained.mlflow_run_id)
    assert run.data.tags["tuning_run_id"] == tuned.mlflow_run_id
    assert run.data.params["model.n_estimators"] == str(tuned.hyperparameters["n_estimators"])

    # Off (params.yaml or the trigger form): the stage is skipped and train fits params.yaml's model as before,
    # whatever an earlier attempt left in tune/.
    off = ConfigurationManager(config_dir, env=env, tune=False)
    skipped = pipeline.run_tune(off, run_id)
    assert isinstance(skipped, pipeline.Skipped)
    assert skipped.reason == ("not tuned: the run's tune is off (trigger form: tune); train fits params.yaml's "
                              "model as written")
    untuned = pipeline.run_train(off, run_id)
    assert untuned.family == "random_forest"
    assert mlflow.get_run(untuned.mlflow_run_id).data.params["model.n_estimators"] == "10"


def test_train_with_tuning_on_needs_the_tune_result(prepared: tuple) -> None:
    config_dir, env, _ = prepared
    cm = ConfigurationManager(config_dir, env=env)
    shutil.copytree(cm.config.artifacts_root / "r1" / "transform", cm.config.artifacts_root / "r2" / "transform")
    shutil.copytree(cm.config.artifacts_root / "r1" / "ingest", cm.config.artifacts_root / "r2" / "ingest")
    shutil.copytree(cm.config.artifacts_root / "r1" / "validate", cm.config.artifacts_root / "r2" / "validate")
    with pytest.raises(pipeline.StageInputError, match=r"r2/tune/result.json is missing"):
        pipeline.run_train(cm, "r2")


def test_main_says_when_tuning_is_skipped_and_why(config_dir: Path, edit_yaml, isolated_env: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    import main

    edit_yaml(config_dir / "params.yaml", lambda d: d["tuning"].update(enabled=False))
    assert main.main(["--stage", "tune", "--run-id", "r", "--config-dir", str(config_dir)]) == 0
    out = capsys.readouterr().out
    assert ("[1/1] tune skipped: not tuned: params.yaml has no tuning: section or says tuning.enabled: false; "
            "train fits params.yaml's model as written") in out
    assert "run r finished: tune skipped" in out and "done in" not in out


# --- the tuning: section and the run's overrides -----------------------------------------------------------------

def test_run_overrides(config_dir: Path, edit_yaml) -> None:
    cm = ConfigurationManager(config_dir, env={}, model_family="hist_gradient_boosting", tune_trials=7)
    assert cm.config.tuning.families == ("hist_gradient_boosting",) and cm.config.tuning.n_trials == 7
    assert list(cm.tuning().spaces) == ["hist_gradient_boosting"]  # tuned only within the run's family
    assert ConfigurationManager(config_dir, env={}, tune=False).config.tuning.enabled is False

    edit_yaml(config_dir / "params.yaml", lambda d: d.pop("tuning"))
    assert ConfigurationManager(config_dir, env={}).config.tuning.enabled is False  # no section: no tuning
    on = ConfigurationManager(config_dir, env={}, tune=True).tuning()
    assert on.tuning.enabled and list(on.spaces) == list(FAMILIES)
    # the defaults: a wall-clock budget first, trials as a cap; judged after 2 of 3 folds
    assert (on.tuning.timeout_seconds, on.tuning.n_trials, on.tuning.cv_folds, on.tuning.prune_after_folds) == \
        (300, 100, 3, 2)
    assert on.spaces["random_forest"]["n_estimators"] == SearchParam(low=100, high=500, log=True)  # the default


def test_a_family_listed_in_search_space_is_searched_over_exactly_that(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml",
              lambda d: d["tuning"].update(search_space={"extra_trees": {"max_depth": {"choices": [2, 4]}}}))
    spaces = ConfigurationManager(config_dir, env={}).tuning().spaces
    assert spaces["extra_trees"] == {"max_depth": SearchParam(choices=(2, 4))}
    assert set(spaces["random_forest"]) == set(FAMILIES["random_forest"].search_space)


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"search_space": {"svm": {}}}, "tuning.search_space.svm", "unknown model family 'svm'"),
    ({"search_space": {"random_forest": {"depth": {"low": 1, "high": 3}}}}, "tuning.search_space.random_forest.depth",
     "not a parameter of RandomForestRegressor"),
    ({"families": ["random_forest", "svm"]}, "tuning.families", "unknown model family 'svm'"),
    ({"search_space": {"extra_trees": {"n_estimators": {"low": 9, "high": 3}}}},
     "tuning.search_space.extra_trees.n_estimators", "low (9) must be less than high (3)"),
    ({"search_space": {"extra_trees": {"max_depth": {"low": 1}}}}, "tuning.search_space.extra_trees.max_depth",
     "expected low and high (a range) or choices (a list)"),
    ({"search_space": {"elasticnet": {"alpha": {"low": 0.0, "high": 1.0, "log": True}}}},
     "tuning.search_space.elasticnet.alpha", "a log range needs low > 0"),
    ({"n_trials": None, "timeout_seconds": None}, "tuning", "the search needs a budget"),
    ({"cv_folds": 1}, "tuning.cv_folds", "expected at least 2"),
    ({"cv_folds": 3, "prune_after_folds": 4}, "tuning.prune_after_folds",
     "must be at most cv_folds (3): a trial has no more folds to score"),
    ({"prune_after_folds": 0}, "tuning.prune_after_folds", "expected at least 1"),
    ({"timeout_seconds": 0}, "tuning.timeout_seconds", "expected more than 0"),
    ({"trials": 5}, "tuning.trials", "unknown key; expected one of: cv_folds, enabled, families"),
])
def test_a_bad_tuning_section_names_file_and_key(config_dir: Path, edit_yaml, change: dict, key: str,
                                                 words: str) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["tuning"].update(change))
    with pytest.raises(ConfigError) as caught:
        ConfigurationManager(config_dir, env={})
    assert caught.value.file.endswith("params.yaml") and caught.value.key == key, caught.value
    assert words in str(caught.value)
