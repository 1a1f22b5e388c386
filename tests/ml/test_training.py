"""Every model family trains as regressor and classifier, logs to MLflow and loads back with skops."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from include.ml.components.training import skops_trusted_types, train
from include.ml.entities import MlflowConfig
from include.ml.exceptions import TrainingError
from include.ml.models import FAMILIES
from tests.support.frames import dataset, training_config


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
    from serving.trust import load_sklearn
    from tests.support.frames import mixed_dataset, mixed_schema

    data = mixed_dataset(task)
    config = replace(training_config(task, family, mlflow_config), schema=mixed_schema(task))
    result = train(data, config, "run-1", tmp_path, dataset_source="/data/mixed.csv")
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(tmp_path / "model")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    contract = Contract.from_mlmodel(mlmodel)
    assert [f.name for f in contract.features] == ["when", "grade", "plate", "kind", "x1"]
    assert (contract.keys, contract.ignored) == (("row_id",), ("note",))
    served = load_sklearn(local, mlmodel)
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
