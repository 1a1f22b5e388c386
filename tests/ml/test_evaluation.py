"""Held-out metrics, plots in MLflow, and the champion/challenger gate with rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.ml import registry
from include.ml.components.evaluation import compute_metrics, decide, evaluate
from include.ml.components.training import train
from include.ml.entities import MlflowConfig, PromotionConfig
from include.ml.exceptions import PipelineError
from tests.support.frames import dataset, evaluation_config, training_config

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
    decision = decide({"rmse": 9.0}, None, "1", LOWER)
    assert decision.promoted and "could not be scored" in decision.reason


def test_undefined_gate_metric_is_an_error() -> None:
    with pytest.raises(PipelineError, match="'roc_auc' is undefined"):
        decide({"accuracy": 1.0}, None, None, PromotionConfig(metric="roc_auc", min_improvement=0.0))


def test_classification_metrics_include_roc_auc() -> None:
    from sklearn.linear_model import LogisticRegression

    data = dataset("classification")
    x, y = data[["x2"]], data["y"]
    scores = compute_metrics("classification", LogisticRegression().fit(x, y), x, y)
    assert set(scores) == {"accuracy", "f1_macro", "roc_auc"}
    assert all(0 <= v <= 1 for v in scores.values())


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
    assert "plots/confusion_matrix.png" in plots


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
