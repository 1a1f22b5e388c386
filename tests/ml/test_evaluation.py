"""Held-out metrics, plots in MLflow, and the champion/challenger gate with rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.ml import registry
from include.ml.components.evaluation import evaluate
from include.ml.components.gate import contract_differences, decide
from include.ml.components.training import train
from include.ml.config_file import MlflowConfig
from include.ml.entities import EvaluationConfig, TrainingConfig
from include.ml.exceptions import IncompatibleChampionError, PipelineError, UnscorableChampionError
from include.ml.metrics import compute_metrics
from include.ml.params_file import METRICS, PromotionConfig
from include.ml.schema_file import SchemaConfig
from tests.support.frames import dataset, evaluation_config, schema, training_config

LOWER = PromotionConfig(metric="rmse", min_improvement=0.01)
HIGHER = PromotionConfig(metric="r2", min_improvement=0.01)


def test_no_champion_promotes() -> None:
    decision = decide({"rmse": 1.0}, None, None, LOWER)
    assert decision.promoted and decision.reason == "no champion yet"


@pytest.mark.parametrize("promotion, challenger, champion, promoted", [
    (LOWER, 0.80, 1.00, True),     # clearly lower error
    (LOWER, 0.995, 1.00, False),   # better, but by less than the margin
    (LOWER, 1.00, 1.00, False),    # equal: never a duplicate champion
    (LOWER, 1.20, 1.00, False),
    (HIGHER, 0.90, 0.80, True),
    (HIGHER, 0.805, 0.80, False),
])
def test_gate_uses_direction_and_margin(promotion: PromotionConfig, challenger: float, champion: float,
                                        promoted: bool) -> None:
    metric = promotion.metric
    decision = decide({metric: challenger}, {metric: champion}, "3", promotion)
    assert decision.promoted is promoted
    assert decision.reason.startswith("better" if promoted else "not better")
    assert "champion v3" in decision.reason


def test_zero_margin_still_needs_a_real_gain() -> None:
    zero = PromotionConfig(metric="rmse", min_improvement=0.0)
    assert not decide({"rmse": 1.0}, {"rmse": 1.0}, "1", zero).promoted
    assert decide({"rmse": 0.99}, {"rmse": 1.0}, "1", zero).promoted


def test_force_and_unscorable_champion() -> None:
    assert decide({"rmse": 9.0}, {"rmse": 1.0}, "1", LOWER, force=True).reason == "forced promotion"
    # A champion the gate could not weigh used to be replaced ("could not be scored"): now only by force.
    with pytest.raises(UnscorableChampionError, match=r"over champion v1, which could not be scored .*--force-promote"):
        decide({"rmse": 9.0}, None, "1", LOWER)
    with pytest.raises(UnscorableChampionError, match="its rmse is undefined on this test set"):
        decide({"rmse": 9.0}, {"mae": 1.0}, "1", LOWER)
    assert decide({"rmse": 9.0}, None, "1", LOWER, force=True).promoted


def test_undefined_gate_metric_is_an_error() -> None:
    with pytest.raises(PipelineError, match="'roc_auc' is undefined"):
        decide({"accuracy": 1.0}, None, None, PromotionConfig(metric="roc_auc", min_improvement=0.0))


@pytest.mark.parametrize("task, metric", [(task, metric) for task, names in METRICS.items() for metric in names])
def test_the_gate_knows_each_metrics_direction(task: str, metric: str) -> None:
    """Real scores of a fitted model and of one that predicts the average (the class shares): whatever the metric's
    direction, the gate prefers the fitted one."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression

    data = dataset(task, rows=300)
    x, y = data[["x2"]], data["y"]
    test = dataset(task, rows=200, seed=1)
    good, weak = (LinearRegression(), DummyRegressor()) if task == "regression" else \
        (LogisticRegression(), DummyClassifier(strategy="prior"))
    better, worse = (compute_metrics(task, model.fit(x, y), test[["x2"]], test["y"]) for model in (good, weak))
    promotion = PromotionConfig(metric=metric, min_improvement=0.0)
    assert promotion.higher_is_better is METRICS[task][metric]
    assert decide(better, worse, "1", promotion).promoted, (better[metric], worse[metric])
    assert not decide(worse, better, "1", promotion).promoted


@pytest.mark.parametrize("margin, promoted, says", [
    (0.001, True, "(lower is better; margin 0.001, absolute margin)"),
    ("1%", False, "needs to be lower by at least 1 (1% of the champion's value, relative margin)"),
])
def test_a_relative_margin_scales_with_the_champion(margin: float | str, promoted: bool, says: str) -> None:
    """A price model: rmse 100 -> 99.5 clears an absolute 0.001 but not 1 % of 100."""
    decision = decide({"rmse": 99.5}, {"rmse": 100.0}, "4", PromotionConfig(metric="rmse", min_improvement=margin))
    assert decision.promoted is promoted and decision.reason.endswith(says), decision.reason


def test_a_relative_margin_promotes_a_small_real_gain_an_absolute_one_refuses() -> None:
    """A log loss near 0: 0.050 -> 0.048 is 4 % better, yet under an absolute 0.01."""
    absolute = decide({"log_loss": 0.048}, {"log_loss": 0.05}, "2",
                      PromotionConfig(metric="log_loss", min_improvement=0.01))
    relative = decide({"log_loss": 0.048}, {"log_loss": 0.05}, "2",
                      PromotionConfig(metric="log_loss", min_improvement="1%"))
    assert not absolute.promoted and relative.promoted
    assert relative.reason == ("better: log_loss 0.0480 vs champion v2 0.0500 (lower is better; margin 0.0005, "
                               "1% of the champion's value, relative margin)")
    # A share of the champion's absolute value: an r2 below 0 still asks for a gain.
    assert not decide({"r2": -0.499}, {"r2": -0.5}, "2", PromotionConfig(metric="r2", min_improvement="1%")).promoted
    assert decide({"r2": -0.49}, {"r2": -0.5}, "2", PromotionConfig(metric="r2", min_improvement="1%")).promoted


def trained(task: str, family: str, mlflow_config: MlflowConfig, tmp_path: Path, run_id: str, seed: int = 0,
            **hyper):
    return train(dataset(task, seed=seed), training_config(task, family, mlflow_config, **hyper), run_id,
                 tmp_path / run_id, dataset_source="/data/unit.csv")


def test_gate_promotes_only_real_improvements(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    import mlflow

    test = dataset("regression", rows=60, seed=99)
    config = evaluation_config("regression", mlflow_config)
    weak = trained("regression", "elasticnet", mlflow_config, tmp_path, "weak", alpha=5.0)
    first = evaluate(test, config, weak, tmp_path / "e1")
    assert first.decision.promoted and first.version == "1" and first.champion_version == "1"

    same = trained("regression", "elasticnet", mlflow_config, tmp_path, "same", alpha=5.0)
    second = evaluate(test, config, same, tmp_path / "e2")
    assert not second.decision.promoted and second.decision.reason.startswith("not better")
    assert second.champion_version == "1" and second.champion_metrics == first.metrics

    strong = trained("regression", "random_forest", mlflow_config, tmp_path, "strong", n_estimators=30)
    third = evaluate(test, config, strong, tmp_path / "e3")
    assert third.decision.promoted and third.champion_version == "3"

    client = mlflow.MlflowClient()
    model = client.get_registered_model("unit-model")
    assert model.aliases == {"champion": 3, "previous_champion": 1}
    assert [e["version"] for e in registry.history("unit-model")] == ["1", "3"]
    assert client.get_model_version("unit-model", "2").tags["gate_decision"].startswith("not better")

    run = mlflow.get_run(strong.mlflow_run_id)
    assert {"test_rmse", "test_mae", "test_r2"} <= set(run.data.metrics)
    assert run.data.tags["registered_version"] == "3"
    artifacts = {a.path for a in client.list_artifacts(strong.mlflow_run_id, "plots")}
    assert artifacts == {"plots/residuals.png", "plots/feature_importance.png"}
    saved = json.loads((tmp_path / "e3" / "result.json").read_text())
    assert saved["decision"]["promoted"] is True

    assert registry.rollback("unit-model") == "1"
    assert registry.champion_version("unit-model") == "1"
    assert registry.history("unit-model")[-1]["reason"] == "rollback"


def test_evaluate_retry_does_not_register_twice(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    model = trained("classification", "hist_gradient_boosting", mlflow_config, tmp_path, "cls")
    test = dataset("classification", rows=60, seed=5)
    config = evaluation_config("classification", mlflow_config)
    first = evaluate(test, config, model, tmp_path / "e")
    again = evaluate(test, config, model, tmp_path / "e")
    assert first.version == again.version == "1"
    assert again.decision.reason == "v1 is already the champion" and not again.decision.promoted
    import mlflow
    assert len(mlflow.MlflowClient().search_model_versions("name = 'unit-model'")) == 1
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(model.mlflow_run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/reliability.png", "plots/feature_importance.png"}
    logged = mlflow.get_run(model.mlflow_run_id).data.metrics
    assert {f"test_{name}" for name in METRICS["classification"]} <= set(logged)


def test_rollback_to_unknown_version_fails_cleanly(mlflow_config: MlflowConfig, tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    model = trained("regression", "elasticnet", mlflow_config, tmp_path, "only")
    evaluate(dataset("regression", rows=30, seed=3), evaluation_config("regression", mlflow_config), model,
             tmp_path / "e")
    with pytest.raises(LookupError, match="no previous_champion"):
        registry.rollback("unit-model")
    with pytest.raises(MlflowException):
        registry.rollback("unit-model", "42")
    assert registry.champion_version("unit-model") == "1"


def test_contract_differences_name_task_target_features_and_dtypes() -> None:
    champion = schema("regression").feature_contract()
    assert contract_differences(champion, champion) == []
    widened = schema("regression").model_copy(update={"columns": tuple(
        c.model_copy(update={"min": -100.0, "nullable": True}) if c.name == "x2" else c
        for c in schema("regression").columns)})
    assert contract_differences(champion, widened.feature_contract()) == []  # ranges and nulls may evolve
    other = {"task": "classification", "target": "species",
             "features": [{"name": "x1", "dtype": "int"}, {"name": "x2", "dtype": "float"},
                          {"name": "bill", "dtype": "float"}]}
    assert contract_differences(champion, other) == [
        "task 'regression' (champion) vs 'classification' (challenger)",
        "target 'y' (champion) vs 'species' (challenger)",
        "features the challenger lacks: kind",
        "features new in the challenger: bill",
        "dtypes changed (champion -> challenger): x1 float -> int",
    ]
    assert "no feature_contract" in contract_differences(None, other)[0]


def without_kind(task: str) -> SchemaConfig:
    full = schema(task)
    return full.model_copy(update={"columns": tuple(c for c in full.columns if c.name != "kind")})


def test_an_incompatible_champion_is_never_replaced_automatically(mlflow_config: MlflowConfig, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    test = dataset("regression", rows=60, seed=99)
    champion = trained("regression", "elasticnet", mlflow_config, tmp_path, "champion")
    assert evaluate(test, evaluation_config("regression", mlflow_config), champion, tmp_path / "e1").version == "1"

    narrow = without_kind("regression")
    config = EvaluationConfig(narrow, PromotionConfig(metric="rmse", min_improvement=0.001), mlflow_config)
    training = training_config("regression", "random_forest", mlflow_config)
    challenger = train(dataset("regression"), TrainingConfig(narrow, training.model, mlflow_config, training.tags),
                       "narrow", tmp_path / "narrow", dataset_source="/data/unit.csv")
    loaded: list[str] = []
    load_model = registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda uri: loaded.append(uri) or load_model(uri))
    with pytest.raises(IncompatibleChampionError) as refused:
        evaluate(test, config, challenger, tmp_path / "e2")
    assert str(refused.value).startswith("unit-model v2 was not promoted over an incompatible champion v1: "
                                         "features the challenger lacks: kind. The champion alias stays on v1")
    assert refused.value.differences == ["features the challenger lacks: kind"]
    assert "models:/unit-model/1" not in loaded  # judged from its MLmodel file, never deserialized
    client = mlflow.MlflowClient()
    assert client.get_registered_model("unit-model").aliases == {"champion": 1}
    assert client.get_model_version("unit-model", "2").tags["gate_decision"].startswith("refused: an incompatible")
    assert not (tmp_path / "e2" / "result.json").exists()

    forced = evaluate(test, config, challenger, tmp_path / "e3", force_promote=True)
    assert forced.decision.promoted and forced.champion_version == "2"
    assert forced.decision.reason == ("forced promotion over an incompatible champion v1: "
                                      "features the challenger lacks: kind")
    assert client.get_registered_model("unit-model").aliases == {"champion": 2, "previous_champion": 1}
    assert registry.history("unit-model")[-1]["reason"] == forced.decision.reason


def test_an_unscorable_champion_fails_the_gate(mlflow_config: MlflowConfig, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    test = dataset("regression", rows=60, seed=99)
    config = evaluation_config("regression", mlflow_config)
    first = trained("regression", "elasticnet", mlflow_config, tmp_path, "first")
    evaluate(test, config, first, tmp_path / "e1")
    second = trained("regression", "random_forest", mlflow_config, tmp_path, "second")
    load_model = registry.load_model

    def broken_champion(uri: str):
        if uri == "models:/unit-model/1":
            raise OSError("artifact store lost the model")
        return load_model(uri)

    monkeypatch.setattr(registry, "load_model", broken_champion)
    with pytest.raises(UnscorableChampionError, match=r"over champion v1, which could not be scored on this test "
                                                      r"set \(OSError: artifact store lost the model\)"):
        evaluate(test, config, second, tmp_path / "e2")
    assert registry.champion_version("unit-model") == "1"
    forced = evaluate(test, config, second, tmp_path / "e3", force_promote=True)
    assert forced.decision.reason.startswith("forced promotion over champion v1, which could not be scored")
    assert registry.champion_version("unit-model") == "2"


def test_long_differences_are_shortened() -> None:
    champion = {"task": "regression", "target": "y", "features": [{"name": f"f{i:02}", "dtype": "float"}
                                                                   for i in range(25)]}
    assert contract_differences(champion, {"task": "regression", "target": "y", "features": []}) == [
        "features the challenger lacks: f00, f01, f02, f03, f04, f05, f06, f07, f08, f09 and 15 more"]
