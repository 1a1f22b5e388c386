"""Every model family trains as regressor and classifier, logs to MLflow and loads back with skops."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from include.ml.components.training import build_pipeline, skops_trusted_types, split_xy, train
from include.ml.config_file import MlflowConfig
from include.ml.exceptions import TrainingError
from include.ml.metrics import compute_metrics
from include.ml.models import CALIBRATION_SKOPS_TYPES, FAMILIES
from include.ml.params_file import ModelConfig
from serving.trust import ALLOWED_SKOPS_TYPES
from tests.support.frames import dataset, imbalanced_dataset, noisy_dataset, schema, training_config


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_family_trains_logs_and_loads(task: str, family: str, mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    import mlflow

    data = dataset(task)
    result = train(data, training_config(task, family, mlflow_config), "run-1", tmp_path,
                   dataset_source="/data/unit.csv")
    assert result.family == family and result.train_rows == len(data)
    assert json.loads((tmp_path / "result.json").read_text())["model_uri"] == result.model_uri

    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.tags["pipeline_run_id"] == "run-1" and run.data.tags["git_sha"] == "test"
    assert run.data.params["family"] == family
    assert run.inputs.dataset_inputs[0].dataset.name == "train"
    # trusted exactly the types this family's fitted pipeline needs, nothing blanket
    assert set(result.skops_trusted_types) <= set(FAMILIES[family].skops_trusted_types)
    info = mlflow.models.get_model_info(result.model_uri)
    assert info.signature is not None and info.flavors["sklearn"]["serialization_format"] == "skops"

    model = mlflow.sklearn.load_model(result.model_uri)
    predictions = model.predict(data.drop(columns=["y"]).head(3))
    assert len(predictions) == 3
    if task == "classification":
        assert set(predictions) <= {"a", "b", "c"}


def test_random_forest_needs_the_tree_type(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    result = train(dataset("regression"), training_config("regression", "random_forest", mlflow_config), "r", tmp_path,
                   dataset_source="/data/unit.csv")
    assert result.skops_trusted_types == ["numpy.dtype", "sklearn.tree._tree.Tree"]


def test_types_outside_the_family_allow_list_are_refused() -> None:
    from sklearn.ensemble import RandomForestRegressor

    fitted = RandomForestRegressor(n_estimators=2).fit([[0.0], [1.0]], [0.0, 1.0])
    with pytest.raises(TrainingError, match=r"not on its skops allow-list: \['sklearn.tree._tree.Tree'\]"):
        skops_trusted_types(fitted, "elasticnet")


def test_fit_failure_is_a_training_error(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    config = training_config("regression", "hist_gradient_boosting", mlflow_config, learning_rate=-1.0)
    with pytest.raises(TrainingError, match="HistGradientBoostingRegressor could not be fitted"):
        train(dataset("regression"), config, "r", tmp_path, dataset_source="/data/unit.csv")
    assert not (tmp_path / "result.json").exists()


def test_types_the_servers_would_refuse_are_refused_at_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """What trains can always be served: a type missing from serving/trust.py's list fails training."""
    from sklearn.ensemble import RandomForestRegressor

    from include.ml.components import training

    monkeypatch.setattr(training, "ALLOWED_SKOPS_TYPES", frozenset({"numpy.dtype"}))
    fitted = RandomForestRegressor(n_estimators=2).fit([[0.0], [1.0]], [0.0, 1.0])
    with pytest.raises(TrainingError, match=r"the prediction server refuses to load: \['sklearn.tree._tree.Tree'\]"):
        skops_trusted_types(fitted, "random_forest")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_every_dtype_and_role_trains_and_loads_on_a_server(task: str, family: str, mlflow_config: MlflowConfig,
                                                           tmp_path: Path) -> None:
    """A datetime, an ordinal, open and listed categories, an id and an ignored column: the model learns from the
    features only, and the server's allow-list loads it back with the same answers."""
    import mlflow
    import yaml

    from serving.contract import Contract
    from serving.trust import load_sklearn, read_model_dir
    from tests.support.frames import mixed_dataset, mixed_schema

    data = mixed_dataset(task)
    config = replace(training_config(task, family, mlflow_config), schema=mixed_schema(task))
    result = train(data, config, "run-1", tmp_path, dataset_source="/data/mixed.csv")
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(tmp_path / "model")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    contract = Contract.from_mlmodel(mlmodel)
    assert [f.name for f in contract.features] == ["when", "grade", "plate", "kind", "x1"]
    assert (contract.keys, contract.ignored) == (("row_id",), ("note",))
    served = load_sklearn(read_model_dir(local), mlmodel)
    x = data[list(contract.names)]
    assert served.predict(x).tolist() == mlflow.sklearn.load_model(result.model_uri).predict(x).tolist()


def test_the_memory_guard_runs_before_training_fits_or_logs_anything(mlflow_config: MlflowConfig, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from include.ml.exceptions import ConfigError

    monkeypatch.setenv("MLOPS_MEMORY_LIMIT", str(2**12))  # 4 KiB: as if the machine were nearly full
    config = training_config("regression", "random_forest", mlflow_config)
    with pytest.raises(ConfigError, match="not enough memory to fit random_forest on 120 rows"):
        train(dataset("regression"), config, "r", tmp_path, dataset_source="/data/unit.csv")
    assert mlflow.search_runs(search_all_experiments=True).empty and not (tmp_path / "result.json").exists()


# --- calibration (model.calibration) ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibration_mends_an_over_confident_forest(method: str) -> None:
    """A forest of pure leaves says 0 or 1 where the truth is a coin toss; calibrated on out-of-fold predictions of
    the training rows, its log loss and Brier score on unseen rows fall."""
    from sklearn.calibration import CalibratedClassifierCV

    train_x, train_y = split_xy(noisy_dataset(1500, seed=0), schema("classification"))
    test_x, test_y = split_xy(noisy_dataset(1000, seed=1), schema("classification"))
    scores = {}
    for calibration in ("none", method):
        config = training_config("classification", "random_forest", MlflowConfig(registered_model_name="u"),
                                 calibration, n_estimators=50)
        pipeline = build_pipeline(config).fit(train_x, train_y)
        scores[calibration] = compute_metrics("classification", pipeline, test_x, test_y)
    step = pipeline.named_steps["model"]
    assert isinstance(step, CalibratedClassifierCV) and (step.method, step.cv, step.ensemble) == (method, 5, False)
    assert step.estimator.get_params()["n_estimators"] == 50 and len(step.calibrated_classifiers_) == 1
    assert scores[method]["log_loss"] < scores["none"]["log_loss"] - 0.5, scores  # measured: 1.90 -> 1.03
    assert scores[method]["brier_score"] < scores["none"]["brier_score"] - 0.02, scores  # 0.342 -> 0.311


def test_a_calibrated_classifier_trains_logs_and_loads(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    import mlflow

    data = dataset("classification")
    config = training_config("classification", "random_forest", mlflow_config, "sigmoid")
    result = train(data, config, "run-1", tmp_path, dataset_source="/data/unit.csv")
    assert (result.estimator, result.calibration) == ("RandomForestClassifier", "sigmoid")
    assert "(sigmoid calibration)" in result.summary()
    # The calibration's own types, trusted at logging and by every prediction server.
    assert set(CALIBRATION_SKOPS_TYPES) <= set(result.skops_trusted_types) <= ALLOWED_SKOPS_TYPES
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.params["calibration"] == "sigmoid" and run.data.params["model.n_estimators"] == "5"
    assert run.data.tags["estimator"] == "RandomForestClassifier"
    model = mlflow.sklearn.load_model(result.model_uri)
    assert type(model.named_steps["model"]).__name__ == "CalibratedClassifierCV"
    assert model.predict_proba(data.drop(columns=["y"]).head(3)).shape == (3, 3)


def test_calibration_types_are_expected_only_of_a_calibrated_model() -> None:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    x, y = [[0.0], [1.0]] * 10, [0, 1] * 10
    calibrated = CalibratedClassifierCV(LogisticRegression(), method="sigmoid", cv=2, ensemble=False).fit(x, y)
    assert skops_trusted_types(calibrated, "elasticnet") == sorted(CALIBRATION_SKOPS_TYPES)
    with pytest.raises(TrainingError, match=r"not on its skops allow-list: \['sklearn.calibration._CalibratedClass"):
        skops_trusted_types(calibrated.calibrated_classifiers_[0], "elasticnet")  # held bare: not a calibration


def test_tuning_calibrates_every_trial_and_the_best(mlflow_config: MlflowConfig) -> None:
    """Tuning swaps in each trial's family and hyperparameters; the calibration stays on the config."""
    from sklearn.calibration import CalibratedClassifierCV

    from include.ml.components.tuning import TuningResult

    config = training_config("classification", "random_forest", mlflow_config, "isotonic")
    trial = replace(config, model=ModelConfig(family="extra_trees", random_state=0, hyperparameters={}))
    assert isinstance(build_pipeline(trial).named_steps["model"], CalibratedClassifierCV)
    best = TuningResult(mlflow_run_id="run", mlflow_run_url="url", family="hist_gradient_boosting",
                        hyperparameters={"max_iter": 20}, metric="log_loss", cv_mean=0.5, cv_std=0.1, best_trial=3,
                        trials=5, pruned=0, failed=0, train_rows=100, cv_folds=3, seconds=1.0).training_config(config)
    step = build_pipeline(best).named_steps["model"]
    assert isinstance(step, CalibratedClassifierCV) and step.method == "isotonic"
    assert type(step.estimator).__name__ == "HistGradientBoostingClassifier"


def test_calibration_of_a_regressor_is_refused(mlflow_config: MlflowConfig) -> None:
    with pytest.raises(TrainingError, match="calibration 'sigmoid' applies to classifiers; the task is regression"):
        build_pipeline(replace(training_config("regression", "random_forest", mlflow_config), calibration="sigmoid"))


def test_every_classifier_family_takes_class_weight_and_no_regressor_does() -> None:
    """docs/configuration.md documents class_weight as a hyperparameter of every classifier family."""
    for family in FAMILIES.values():
        assert "class_weight" in family.estimator_class("classification")().get_params()
        assert "class_weight" not in family.estimator_class("regression")().get_params()


@pytest.mark.parametrize("family, hyperparameters", [
    ("random_forest", {"n_estimators": 100, "min_samples_leaf": 5}), ("elasticnet", {})])
def test_class_weight_trades_probabilities_for_the_rare_class(family: str, hyperparameters: dict) -> None:
    """The table of docs/configuration.md: `balanced` raises balanced accuracy and worsens log loss and Brier score;
    calibration restores the probabilities, and the decisions with them."""
    train_x, train_y = split_xy(imbalanced_dataset(3000, seed=0), schema("classification"))
    test_x, test_y = split_xy(imbalanced_dataset(3000, seed=1), schema("classification"))
    scores = {}
    for weight, calibration in ((None, "none"), ("balanced", "none"), ("balanced", "sigmoid")):
        config = training_config("classification", family, MlflowConfig(registered_model_name="u"), calibration,
                                 **hyperparameters, class_weight=weight)
        scores[weight, calibration] = compute_metrics("classification", build_pipeline(config).fit(train_x, train_y),
                                                      test_x, test_y)
    plain, weighted, both = scores[None, "none"], scores["balanced", "none"], scores["balanced", "sigmoid"]
    assert weighted["balanced_accuracy"] > plain["balanced_accuracy"] + 0.1, scores
    assert weighted["log_loss"] > plain["log_loss"] + 0.05 and weighted["brier_score"] > plain["brier_score"], scores
    assert both["log_loss"] < weighted["log_loss"] - 0.1 and both["balanced_accuracy"] < weighted["balanced_accuracy"]
